"""Raise the soft limit of open files to the hard limit at start, as servers such as PostgreSQL do.

runuser, ``sudo -u postgres`` and systemd start pgdr with a soft limit of 1024 open files, a default
kept for programs that wait with ``select()``; the hard limit (often 524288) is what the system allows.
A restore or a ``verify --deep`` rehearsal of a cluster of thousands of files must not fail with "Too
many open files" for the lower one. pgdr and its libraries wait with poll or epoll, so it takes what
the hard limit allows.
"""

from __future__ import annotations

import resource

#: Where an unlimited hard limit is capped: the kernel refuses more than ``fs.nr_open`` anyway.
UNLIMITED_CAP = 1 << 20


def raise_open_files_limit() -> None:
    """Set the soft RLIMIT_NOFILE to the hard limit; never fails (pgdr runs on with what it has)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else _nr_open()
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        pass


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as fh:
            return min(int(fh.read()), UNLIMITED_CAP)
    except (OSError, ValueError):
        return UNLIMITED_CAP
