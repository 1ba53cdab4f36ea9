"""``pgdr verify``: prove the stored backups and WAL are what was written, and (``--deep``) that they restore.

A backup that was written correctly can still rot: a disk flips a bit, an operator deletes a folder, an
upload is cut short, a lifecycle rule removes WAL. Nobody notices until the restore, which is the worst
moment. So verify reads every stored byte back and compares it with what the manifests and the WAL
object names promise, and says which copy (which repository) is bad, because the other copy is
usually fine and is what the operator restores from.

Levels:

* checksums (default): every object of every backup and every archived WAL object, in every
  repository that holds it, is streamed (1 MiB at a time, never a whole object in memory) and its
  size and sha256 compared with what the manifest or the WAL object's name promises; compressed
  objects are also decompressed on the fly, which catches a stream that hashes right but cannot be
  unpacked, and the original bytes' sha256 compared where the manifest records it (a tar PostgreSQL
  compressed itself has none: ``pg_verifybackup`` checks its files, in deep). A ``.dump`` must pass
  ``pg_restore --list``. The archive of every repository is checked for holes. A year of history is
  too much to read every day, so each repository remembers what was read and found intact (see
  ``records.Memory``): a run reads what is new or changed, and each remembered object again at its own turn,
  once every ``[verify] reread_days`` days, so a daily run reads about 1/reread_days of the old ones.
  Anything found damaged is never remembered, so it is read (and reported) again on every run.
* full (``--full``): the same checks of every object now, whatever is remembered.
* deep: full, plus a restore rehearsal: the newest physical backup (or the named one) is restored
  into a scratch directory (an incremental one combined with its chain by ``pg_combinebackup``, as a
  restore does), checked with ``pg_verifybackup``, started as a real server that replays to its
  consistency point through the real ``restore_command``, and queried; the scratch directory is
  removed whatever happens. A rehearsal this host cannot hold (no room or no permission for the
  scratch directory, too few open files, shared memory) proves nothing about the backup: it is an
  error of the run, "could not rehearse", never a BAD backup.

A named backup (``pgdr verify NAME``) is read whole, with the WAL it needs to become consistent
(deep: all the WAL it can replay), whatever is remembered: the operator asked about it now. A named
incremental is read with every backup down its chain, which it cannot be restored without.

An incremental backup is only as good as its chain: in each repository, every backup it builds on,
down to the full one, must be there and sound. A link missing (expired, deleted) or found damaged in
a repository is the incremental's problem there (``objects.check_chains``), so it shows as BAD; a restore
plan judges each backup of the chain by its own record, and refuses a chain one of whose backups
has no intact copy left (``backend.restore.copies``).

WAL holes are classified so that normal archive lag never raises a data-loss alarm: a hole that is
queued for upload to that repository (and held by another one) is "uploading"; a hole in a repository
``wal-push`` does not wait for, held by another repository and younger than ``DELAY_GRACE``, is
"delayed"; everything else is "lost" (from that repository, or, when no repository holds it, from the
archive: point-in-time recovery cannot cross it). Segments after a repository's newest one that
another repository holds are judged the same way, the age being that of the other copy: lag is
queued, so an unqueued segment the other copy has held for long never arrives.

Each repository is also compared with the others as a whole, since a hole is only visible between
segments the repository still holds: one emptied (or swapped for another, empty one, by a changed
endpoint or bucket) holds nothing to have holes between. A repository lacking segments that another
holds, is not owed by the upload queue, that its own retention keeps, and that are older than
anything it still holds (or that holds no backup at all though it has WAL from before the others'
backups) lost them: that is a ``RepositoryLoss``, reported at once, without the grace of a hole.

Each result is recorded as ``verify/<backup name>.json`` in every repository holding the backup, so
the catalog and the console can say when each backup was last verified and how (``records.last_verified``);
the WAL objects found corrupt in a repository are recorded in its ``verify/corrupt-wal.json``
(``records.corrupt_wal``). A restore plan reads both to take another repository's copy
(``backend.restore.copies``).

A verify that finds problems (or fails) is sent to Telegram by ``command.verify`` itself, so the CLI, the
console and the daemon all alert alike; a full run that passes after a failure says so once.

Where each part lives (import the module itself: this package's ``__init__`` imports nothing, so the
catalog and a restore plan can read the records without loading the checks and the rehearsal, which
import them in turn):

* ``command``: ``verify``, the run in order, from listing to the stored results.
* ``scan``: the listings of the repositories, and the streaming read-back of stored bytes.
* ``objects``: each backup's objects, its manifests, and each incremental's chain.
* ``wal``: holes in each repository's archive, classified, and each WAL object read back.
* ``losses``: each repository compared with the others as a whole (also ``pgdr check``).
* ``rehearsal``: the restore rehearsal of ``--deep``.
* ``records``: what is left in each repository for later (results, memory, corrupt WAL).
* ``report``: what a run found, as plain data.
"""
