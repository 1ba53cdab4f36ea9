"""Tests for backend.walindex: pg_waldump output parsed from captured text, and real archived segments.

The captured lines are PostgreSQL 15.18 pg_waldump output (run with TZ=UTC) from a scratch cluster,
verbatim except that long "inval msgs" lists are cut short, trailing blanks are stripped and repetitive
catalog Heap/Btree records are thinned out.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.index import ensure_indexes, index_key
from backend.catalog import read_catalog
from backend.config import load_config
from backend.repository import open_repositories
from backend.walindex import (
    SegmentHeader,
    SegmentIndex,
    WalEvent,
    WalIndexError,
    index_segment,
    parse_waldump,
    read_segment_header,
    restore_point_time,
)
from backend.walnames import SegmentName, parse_lsn
from tests.harness.cluster import PG_BIN, Cluster, running_cluster

PG_WALDUMP = str(PG_BIN / "pg_waldump")
MB = 1024 * 1024

# Segment 0/01..: two INSERTs, a restore point, TRUNCATE t1 (xid 727: t1 = base/5/16384, its toast
# 16387, toast index 16395, index 16388), DROP TABLE t2 (xid 728, base/5/16389), an aborted INSERT (729),
# CREATE TABLE t4 + TRUNCATE t4 in one transaction (730: a Storage TRUNCATE), an aborted DROP (731).
CAPTURED_BASIC = """\
rmgr: Heap        len (rec/tot):     61/    61, tx:        725, lsn: 0/01521620, prev 0/01520E38, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 0
rmgr: Btree       len (rec/tot):     90/    90, tx:        725, lsn: 0/01521660, prev 0/01521620, desc: NEWROOT lev 0, blkref #0: rel 1663/5/16395 blk 1, blkref #2: rel 1663/5/16395 blk 0
rmgr: Btree       len (rec/tot):     64/    64, tx:        725, lsn: 0/015216C0, prev 0/01521660, desc: INSERT_LEAF off 1, blkref #0: rel 1663/5/16395 blk 1
rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01521700, prev 0/015216C0, desc: COMMIT 2026-11-25 14:33:18.285139 UTC
rmgr: Heap        len (rec/tot):     61/    61, tx:        726, lsn: 0/01521728, prev 0/01521700, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16384 blk 0
rmgr: Btree       len (rec/tot):     64/    64, tx:        726, lsn: 0/01521768, prev 0/01521728, desc: INSERT_LEAF off 2, blkref #0: rel 1663/5/16395 blk 1
rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/015217A8, prev 0/01521768, desc: COMMIT 2026-11-25 14:33:18.311995 UTC
rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/015217D0, prev 0/015217A8, desc: RESTORE_POINT before_migration
rmgr: Standby     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521838, prev 0/015217D0, desc: LOCK xid 727 db 5 rel 16384
rmgr: Storage     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521868, prev 0/01521838, desc: CREATE base/5/16396
rmgr: Heap        len (rec/tot):    123/   123, tx:        727, lsn: 0/01521898, prev 0/01521868, desc: UPDATE off 5 xmax 727 flags 0x60 ; new off 9 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Btree       len (rec/tot):     64/    64, tx:        727, lsn: 0/01521918, prev 0/01521898, desc: INSERT_LEAF off 116, blkref #0: rel 1663/5/2662 blk 2
rmgr: Standby     len (rec/tot):     42/    42, tx:        727, lsn: 0/015219D8, prev 0/01521998, desc: LOCK xid 727 db 5 rel 16387
rmgr: Storage     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521A08, prev 0/015219D8, desc: CREATE base/5/16397
rmgr: Standby     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521B88, prev 0/01521B48, desc: LOCK xid 727 db 5 rel 16395
rmgr: Storage     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521BB8, prev 0/01521B88, desc: CREATE base/5/16398
rmgr: XLOG        len (rec/tot):     49/   137, tx:        727, lsn: 0/01521D10, prev 0/01521CD0, desc: FPI , blkref #0: rel 1663/5/16398 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521DA0, prev 0/01521D10, desc: LOCK xid 727 db 5 rel 16388
rmgr: Storage     len (rec/tot):     42/    42, tx:        727, lsn: 0/01521DD0, prev 0/01521DA0, desc: CREATE base/5/16399
rmgr: XLOG        len (rec/tot):     49/   137, tx:        727, lsn: 0/01521F38, prev 0/01521EF8, desc: FPI , blkref #0: rel 1663/5/16399 blk 0 FPW
rmgr: Transaction len (rec/tot):    361/   361, tx:        727, lsn: 0/01521FC8, prev 0/01521F38, desc: COMMIT 2026-11-25 14:33:18.398412 UTC; rels: base/5/16388 base/5/16395 base/5/16387 base/5/16384; inval msgs: catcache 55 catcache 54 catcache 55 catcache 54
rmgr: Standby     len (rec/tot):     42/    42, tx:        728, lsn: 0/01522150, prev 0/01521FC8, desc: LOCK xid 728 db 5 rel 16389
rmgr: Heap        len (rec/tot):     54/    54, tx:        728, lsn: 0/01522180, prev 0/01522150, desc: DELETE off 13 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1247 blk 14
rmgr: Transaction len (rec/tot):    469/   469, tx:        728, lsn: 0/01522458, prev 0/01522420, desc: COMMIT 2026-11-25 14:33:18.427715 UTC; rels: base/5/16389; dropped stats: 2/5/16389; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Heap        len (rec/tot):     59/    59, tx:        729, lsn: 0/01522630, prev 0/01522458, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16392 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        729, lsn: 0/01522670, prev 0/01522630, desc: ABORT 2026-11-25 14:33:18.455852 UTC
rmgr: Standby     len (rec/tot):     42/    42, tx:        730, lsn: 0/01522698, prev 0/01522670, desc: LOCK xid 730 db 5 rel 16400
rmgr: Storage     len (rec/tot):     42/    42, tx:        730, lsn: 0/015226C8, prev 0/01522698, desc: CREATE base/5/16400
rmgr: Heap        len (rec/tot):    211/   211, tx:        730, lsn: 0/015226F8, prev 0/015226C8, desc: INSERT off 16 flags 0x00, blkref #0: rel 1663/5/1247 blk 14
rmgr: Btree       len (rec/tot):     64/    64, tx:        730, lsn: 0/015227D0, prev 0/015226F8, desc: INSERT_LEAF off 252, blkref #0: rel 1663/5/2703 blk 2
rmgr: Heap2       len (rec/tot):     85/    85, tx:        730, lsn: 0/01522850, prev 0/01522810, desc: MULTI_INSERT 1 tuples flags 0x02, blkref #0: rel 1663/5/2608 blk 13
rmgr: Storage     len (rec/tot):     46/    46, tx:        730, lsn: 0/01524958, prev 0/01524910, desc: TRUNCATE base/5/16400 to 0 blocks flags 7
rmgr: Transaction len (rec/tot):    405/   405, tx:        730, lsn: 0/01524988, prev 0/01524958, desc: COMMIT 2026-11-25 14:33:18.484054 UTC; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Standby     len (rec/tot):     42/    42, tx:        731, lsn: 0/01524B20, prev 0/01524988, desc: LOCK xid 731 db 5 rel 16392
rmgr: Heap        len (rec/tot):     54/    54, tx:        731, lsn: 0/01524B50, prev 0/01524B20, desc: DELETE off 15 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1247 blk 14
rmgr: Transaction len (rec/tot):     38/    38, tx:        731, lsn: 0/01524E28, prev 0/01524DF0, desc: ABORT 2026-11-25 14:33:18.513023 UTC
rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: 0/01524E50, prev 0/01524E28, desc: SWITCH
"""  # noqa: E501

# PREPARE TRANSACTION + COMMIT PREPARED of DROP TABLE tp (770); TRUNCATE ts in a released savepoint
# (771, subxact 772) beside a rolled-back one (773); TRUNCATE tr + reload (774); REINDEX TABLE tr (775);
# DROP DATABASE victim (776).
CAPTURED_TRANSACTIONS = """\
rmgr: Transaction len (rec/tot):    933/   933, tx:        770, lsn: 0/03B25C50, prev 0/03B25C18, desc: PREPARE gid g1: 2026-11-25 14:36:22.161824 UTC; rels(commit): base/5/16509; commit dropped stats: 2/5/16509; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Transaction len (rec/tot):    473/   473, tx:          0, lsn: 0/03B25FF8, prev 0/03B25C50, desc: COMMIT_PREPARED 770: 2026-11-25 14:36:22.194148 UTC; rels: base/5/16509; dropped stats: 2/5/16509; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Storage     len (rec/tot):     42/    42, tx:        772, lsn: 0/03B26268, prev 0/03B26220, desc: CREATE base/5/16522
rmgr: Storage     len (rec/tot):     42/    42, tx:        773, lsn: 0/03B26408, prev 0/03B263D8, desc: CREATE base/5/16523
rmgr: Transaction len (rec/tot):     70/    70, tx:        773, lsn: 0/03B2B4D0, prev 0/03B2B488, desc: ABORT 2026-11-25 14:36:22.223980 UTC; rels: base/5/16523; dropped stats: 2/5/16523
rmgr: Transaction len (rec/tot):    122/   122, tx:        771, lsn: 0/03B2B518, prev 0/03B2B4D0, desc: COMMIT 2026-11-25 14:36:22.224151 UTC; rels: base/5/16512; subxacts: 772; inval msgs: catcache 55 catcache 54 relcache 16512
rmgr: Storage     len (rec/tot):     42/    42, tx:        774, lsn: 0/03B2B5C8, prev 0/03B2B598, desc: CREATE base/5/16526
rmgr: Storage     len (rec/tot):     42/    42, tx:        774, lsn: 0/03B2B768, prev 0/03B2B738, desc: CREATE base/5/16527
rmgr: Storage     len (rec/tot):     42/    42, tx:        774, lsn: 0/03B2B918, prev 0/03B2B8E8, desc: CREATE base/5/16528
rmgr: XLOG        len (rec/tot):     49/   137, tx:        774, lsn: 0/03B2BA70, prev 0/03B2BA30, desc: FPI , blkref #0: rel 1663/5/16528 blk 0 FPW
rmgr: Storage     len (rec/tot):     42/    42, tx:        774, lsn: 0/03B2BB30, prev 0/03B2BB00, desc: CREATE base/5/16529
rmgr: XLOG        len (rec/tot):     49/   137, tx:        774, lsn: 0/03B2BC98, prev 0/03B2BC58, desc: FPI , blkref #0: rel 1663/5/16529 blk 0 FPW
rmgr: Heap        len (rec/tot):     61/    61, tx:        774, lsn: 0/03B2BD28, prev 0/03B2BC98, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16526 blk 0
rmgr: Heap        len (rec/tot):     61/    61, tx:        774, lsn: 0/03B2BE08, prev 0/03B2BDC8, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16526 blk 0
rmgr: Transaction len (rec/tot):    361/   361, tx:        774, lsn: 0/03B2EFB8, prev 0/03B2EF78, desc: COMMIT 2026-11-25 14:36:22.255778 UTC; rels: base/5/16519 base/5/16520 base/5/16518 base/5/16515; inval msgs: catcache 55 catcache 54 catcache 55 catcache 54
rmgr: Storage     len (rec/tot):     42/    42, tx:        775, lsn: 0/03B2F158, prev 0/03B2F128, desc: CREATE base/5/16530
rmgr: XLOG        len (rec/tot):     49/  2089, tx:        775, lsn: 0/03B2F2A0, prev 0/03B2F260, desc: FPI , blkref #0: rel 1663/5/16530 blk 1 FPW
rmgr: XLOG        len (rec/tot):     49/   137, tx:        775, lsn: 0/03B2FAD0, prev 0/03B2F2A0, desc: FPI , blkref #0: rel 1663/5/16530 blk 0 FPW
rmgr: Storage     len (rec/tot):     42/    42, tx:        775, lsn: 0/03B2FD10, prev 0/03B2FCE0, desc: CREATE base/5/16531
rmgr: XLOG        len (rec/tot):     49/   137, tx:        775, lsn: 0/03B2FE68, prev 0/03B2FE28, desc: FPI , blkref #0: rel 1663/5/16531 blk 0 FPW
rmgr: Transaction len (rec/tot):    305/   305, tx:        775, lsn: 0/03B2FEF8, prev 0/03B2FE68, desc: COMMIT 2026-11-25 14:36:22.284713 UTC; rels: base/5/16529 base/5/16528; inval msgs: catcache 55 catcache 54 catcache 55 catcache 54
rmgr: Database    len (rec/tot):     38/    38, tx:        776, lsn: 0/03B301C8, prev 0/03B30150, desc: DROP dir 1663/16508
rmgr: Transaction len (rec/tot):     98/    98, tx:        776, lsn: 0/03B301F0, prev 0/03B301C8, desc: COMMIT 2026-11-25 14:36:22.320267 UTC; dropped stats: 1/16508/0; inval msgs: catcache 21 catcache 21; sync
"""  # noqa: E501

# REFRESH MATERIALIZED VIEW mv (738), DROP VIEW vw (740), VACUUM FULL v1 (748), and one transaction doing
# ALTER TABLE at3 ALTER COLUMN id TYPE bigint (a rewrite) and DROP TABLE small (oid 16544) (781).
CAPTURED_REWRITES = """\
rmgr: Storage     len (rec/tot):     42/    42, tx:        738, lsn: 0/020A54C0, prev 0/020A5490, desc: CREATE base/5/16477
rmgr: Storage     len (rec/tot):     42/    42, tx:        738, lsn: 0/020A6508, prev 0/020A64D8, desc: CREATE base/5/16480
rmgr: Storage     len (rec/tot):     42/    42, tx:        738, lsn: 0/020A7098, prev 0/020A7058, desc: CREATE base/5/16481
rmgr: XLOG        len (rec/tot):     49/   137, tx:        738, lsn: 0/020A7818, prev 0/020A77D8, desc: FPI , blkref #0: rel 1663/5/16481 blk 0 FPW
rmgr: Transaction len (rec/tot):   2437/  2437, tx:        738, lsn: 0/020AA390, prev 0/020AA340, desc: COMMIT 2026-11-25 14:33:55.464307 UTC; rels: base/5/16430 base/5/16433 base/5/16434; dropped stats: 2/5/16434 2/5/16433 2/5/16477; inval msgs: catcache 55 catcache 54 catcache 80 catcache 79
rmgr: Transaction len (rec/tot):    309/   309, tx:        740, lsn: 0/020ABF08, prev 0/020ABED0, desc: COMMIT 2026-11-25 14:33:55.528909 UTC; dropped stats: 2/5/16436; inval msgs: catcache 58 catcache 80 catcache 79 catcache 80
rmgr: Storage     len (rec/tot):     42/    42, tx:        748, lsn: 0/020CE620, prev 0/020CE5F0, desc: CREATE base/5/16488
rmgr: Storage     len (rec/tot):     42/    42, tx:        748, lsn: 0/020CF650, prev 0/020CF620, desc: CREATE base/5/16491
rmgr: Storage     len (rec/tot):     42/    42, tx:        748, lsn: 0/020D02A0, prev 0/020D0230, desc: CREATE base/5/16492
rmgr: XLOG        len (rec/tot):     49/   137, tx:        748, lsn: 0/020D09E0, prev 0/020D0998, desc: FPI , blkref #0: rel 1663/5/16492 blk 0 FPW
rmgr: XLOG        len (rec/tot):     49/  8209, tx:        748, lsn: 0/020D0D58, prev 0/020D0D28, desc: FPI , blkref #0: rel 1663/5/16488 blk 0 FPW
rmgr: XLOG        len (rec/tot):     49/  8209, tx:        748, lsn: 0/020D2D88, prev 0/020D0D58, desc: FPI , blkref #0: rel 1663/5/16488 blk 1 FPW
rmgr: XLOG        len (rec/tot):     49/  8209, tx:        748, lsn: 0/020D4DB8, prev 0/020D2D88, desc: FPI , blkref #0: rel 1663/5/16488 blk 2 FPW
rmgr: XLOG        len (rec/tot):     49/  8209, tx:        748, lsn: 0/020D6DE8, prev 0/020D4DB8, desc: FPI , blkref #0: rel 1663/5/16488 blk 3 FPW
rmgr: XLOG        len (rec/tot):     49/  3529, tx:        748, lsn: 0/020D8E18, prev 0/020D6DE8, desc: FPI , blkref #0: rel 1663/5/16488 blk 4 FPW
rmgr: Storage     len (rec/tot):     42/    42, tx:        748, lsn: 0/020DA3D8, prev 0/020DA3A8, desc: CREATE base/5/16493
rmgr: XLOG        len (rec/tot):     49/  7429, tx:        748, lsn: 0/020DA530, prev 0/020DA4F0, desc: FPI , blkref #0: rel 1663/5/16493 blk 1 FPW
rmgr: XLOG        len (rec/tot):     49/  7429, tx:        748, lsn: 0/020DC250, prev 0/020DA530, desc: FPI , blkref #0: rel 1663/5/16493 blk 2 FPW
rmgr: XLOG        len (rec/tot):     49/  5449, tx:        748, lsn: 0/020DDF58, prev 0/020DC250, desc: FPI , blkref #0: rel 1663/5/16493 blk 4 FPW
rmgr: XLOG        len (rec/tot):     49/   141, tx:        748, lsn: 0/020DF4C0, prev 0/020DDF58, desc: FPI , blkref #0: rel 1663/5/16493 blk 3 FPW
rmgr: XLOG        len (rec/tot):     49/   137, tx:        748, lsn: 0/020DF550, prev 0/020DF4C0, desc: FPI , blkref #0: rel 1663/5/16493 blk 0 FPW
rmgr: Transaction len (rec/tot):   2561/  2561, tx:        748, lsn: 0/020DFDB8, prev 0/020DFD80, desc: COMMIT 2026-11-25 14:33:57.852550 UTC; rels: base/5/16468 base/5/16471 base/5/16472 base/5/16473; dropped stats: 2/5/16492 2/5/16491 2/5/16488; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Storage     len (rec/tot):     42/    42, tx:        781, lsn: 0/08043660, prev 0/08043630, desc: CREATE base/5/16567
rmgr: Storage     len (rec/tot):     42/    42, tx:        781, lsn: 0/080457A0, prev 0/08045770, desc: CREATE base/5/16570
rmgr: Storage     len (rec/tot):     42/    42, tx:        781, lsn: 0/08046378, prev 0/08046338, desc: CREATE base/5/16571
rmgr: Transaction len (rec/tot):   2845/  2845, tx:        781, lsn: 0/080492C8, prev 0/08049290, desc: COMMIT 2026-11-25 14:40:58.417815 UTC; rels: base/5/16544 base/5/16554 base/5/16557 base/5/16558; dropped stats: 2/5/16558 2/5/16557 2/5/16567 2/5/16544; inval msgs: catcache 7 catcache 6 catcache 80 catcache 79
"""  # noqa: E501


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def by_xid(index: SegmentIndex) -> dict[int | None, WalEvent]:
    return {e.xid: e for e in index.events if e.kind != "restore_point"}


def test_parse_commits_restore_point_truncate_and_drop() -> None:
    index = parse_waldump(CAPTURED_BASIC.splitlines(), "000000010000000000000001")

    assert index.commits == 5  # 725 726 727 728 730
    assert index.aborts == 2  # 729 731
    assert index.first_commit == at("2026-11-25 14:33:18.285139")
    assert index.last_commit == at("2026-11-25 14:33:18.484054")
    assert index.first_lsn == parse_lsn("0/01521700")
    assert index.last_lsn == parse_lsn("0/01524988")
    assert index.last_record_lsn == parse_lsn("0/01524E50")
    assert index.tail_complete  # ends with a WAL switch
    assert [e.kind for e in index.events] == ["restore_point", "truncate", "drop"]

    point = index.restore_points()[0]
    assert point.name == "before_migration"
    assert point.lsn == parse_lsn("0/015217D0")
    assert point.xid is None
    # pg_waldump does not print rp_time: the pure parser falls back to the commit before it
    assert point.time == at("2026-11-25 14:33:18.311995")
    assert point.time_source == "preceding_commit"

    events = by_xid(index)
    truncate = events[727]
    assert truncate.kind == "truncate" and truncate.destructive
    assert truncate.time == at("2026-11-25 14:33:18.398412") and truncate.time_source == "commit"
    assert truncate.lsn == parse_lsn("0/01521FC8")
    assert sorted(truncate.relations) == ["base/5/16384", "base/5/16387", "base/5/16388", "base/5/16395"]
    assert truncate.oids == []

    drop = events[728]
    assert drop.kind == "drop" and drop.destructive
    assert drop.relations == ["base/5/16389"]
    assert drop.oids == [16389]
    assert drop.time == at("2026-11-25 14:33:18.427715")
    # 730 truncated a table created in the same transaction (a Storage TRUNCATE): nothing committed was lost
    assert 730 not in events
    assert [e.lsn for e in index.destructive()] == [truncate.lsn, drop.lsn]


def test_parse_subtransactions_two_phase_reload_reindex_and_drop_database() -> None:
    index = parse_waldump(CAPTURED_TRANSACTIONS.splitlines())

    assert index.commits == 5  # COMMIT_PREPARED 770, 771, 774, 775, 776; PREPARE is not a commit
    assert index.aborts == 1  # the rolled-back savepoint, subxact 773
    assert not index.tail_complete  # no switch record: the next record may cross into the next segment
    events = by_xid(index)
    assert set(events) == {770, 771, 774, 775, 776}

    prepared = events[770]  # COMMIT_PREPARED has tx: 0 and names the xid in its desc
    assert (prepared.kind, prepared.relations, prepared.oids) == ("drop", ["base/5/16509"], [16509])
    assert prepared.time == at("2026-11-25 14:36:22.194148")

    savepoint = events[771]  # the new relfilenode was created by subxact 772
    assert (savepoint.kind, savepoint.relations) == ("truncate", ["base/5/16512"])

    reload = events[774]  # TRUNCATE then INSERT: the new heap got row inserts, so not a rewrite
    assert reload.kind == "truncate"
    assert sorted(reload.relations) == ["base/5/16515", "base/5/16518", "base/5/16519", "base/5/16520"]

    reindex = events[775]  # every new relfilenode was built from page images
    assert (reindex.kind, reindex.destructive) == ("rewrite", False)

    database = events[776]
    assert (database.kind, database.relations, database.oids) == ("drop_database", ["base/16508"], [16508])
    assert database.destructive


def test_parse_rewrites_are_not_drops_but_a_drop_beside_a_rewrite_is() -> None:
    events = by_xid(parse_waldump(CAPTURED_REWRITES.splitlines()))

    assert events[738].kind == "rewrite"  # REFRESH MATERIALIZED VIEW: transient heap + old toast pair dropped
    assert events[748].kind == "rewrite"  # VACUUM FULL: transient heap, toast and toast index dropped
    view = events[740]
    assert (view.kind, view.relations, view.oids) == ("drop", [], [16436])  # a view has no storage
    migration = events[781]
    assert (migration.kind, migration.oids) == ("drop", [16544])
    assert "base/5/16544" in migration.relations


def test_parse_rewrite_without_its_create_records() -> None:
    """The commit alone (its CREATEs in an earlier segment): the transient OID is newer than all removed."""
    commit = next(line for line in CAPTURED_REWRITES.splitlines() if "tx:        748" in line and "COMMIT" in line)
    assert by_xid(parse_waldump([commit]))[748].kind == "rewrite"
    truncate = next(line for line in CAPTURED_BASIC.splitlines() if "tx:        727" in line and "COMMIT" in line)
    assert by_xid(parse_waldump([truncate]))[727].kind == "truncate"


def test_parse_ignores_non_record_lines_and_refuses_local_times() -> None:
    lines = ["first record is after 0/2000010, at 0/2000028, skipping over 24 bytes", "", *CAPTURED_BASIC.splitlines()]
    assert parse_waldump(lines).commits == 5
    local = CAPTURED_BASIC.splitlines()[3].replace("14:33:18.285139 UTC", "09:33:18.285139 EST")
    assert "EST" in local
    with pytest.raises(WalIndexError, match="TZ=UTC"):
        parse_waldump([local])
    with pytest.raises(WalIndexError, match="cannot read"):
        parse_waldump(["rmgr: Transaction garbage"])


def test_json_round_trip() -> None:
    index = parse_waldump(CAPTURED_BASIC.splitlines(), "000000010000000000000001")
    index.stop_reason = "error in WAL record at 0/1524E50: invalid record length at 0/1524E68: wanted 24, got 0"
    data = json.loads(json.dumps(index.to_json()))
    assert data["first_commit"] == "2026-11-25T14:33:18.285139+00:00"
    assert data["events"][1]["lsn"] == "0/01521FC8"
    assert SegmentIndex.from_json(data) == index
    assert SegmentIndex.from_json(SegmentIndex(segment="000000010000000000000002").to_json()).events == []


def test_continuation_end_skips_page_headers() -> None:
    def header(rem_len: int) -> SegmentHeader:
        return SegmentHeader(0x0007, 1, 0x3000000, rem_len, 1, 16 * 1024 * 1024, 8192)

    assert header(263).continuation_end() == 40 + 263  # after the 40-byte long page header
    assert header(8192 - 40).continuation_end() == 8192
    assert header(8192 - 40 + 100).continuation_end() == 8192 + 24 + 100  # then 24-byte page headers
    assert header(2 * 8192).continuation_end() == 2 * 8192 + 40 + 24 + 24


def test_restore_point_time_from_a_record_crossing_a_page(tmp_path: Path) -> None:
    """rp_time is read from the record's bytes, skipping the page header in its middle."""
    size, block = MB, 8192
    start = 5 * size
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, start, 0, 7, size, block)
    when = datetime(2026, 11, 25, 14, 33, 18, 311995, tzinfo=UTC)
    micros = (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    data = struct.pack("<q", micros) + b"before_migration".ljust(64, b"\0")
    record = struct.pack("<IIQBBxxI", 24 + 2 + len(data), 0, 0, 0x70, 0, 0) + bytes([255, len(data)]) + data
    segment = bytearray(2 * block)
    segment[: len(header)] = header
    offset = block - 50  # the record's first 50 bytes end page 0, the rest follows page 1's 24-byte header
    segment[offset:block] = record[:50]
    segment[block + 24 : block + 24 + len(record) - 50] = record[50:]
    path = tmp_path / "000000010000000000000005"
    path.write_bytes(bytes(segment))

    parsed = read_segment_header(path)
    assert (parsed.segment_size, parsed.block_size, parsed.page_address) == (size, block, start)
    assert restore_point_time({5: path}, parsed, start + offset, "before_migration") == when
    assert restore_point_time({5: path}, parsed, start + offset, "another_name") is None
    assert restore_point_time({}, parsed, start + offset, "before_migration") is None


# --- real segments ------------------------------------------------------------------------------


def server_now(cluster: Cluster) -> datetime:
    value = cluster.sql("SELECT clock_timestamp()")[0][0]
    assert isinstance(value, datetime)
    return value


def in_transaction(cluster: Cluster, statement: str) -> int:
    """Run ``statement`` in a transaction block; returns its xid."""
    with cluster.connect() as conn, conn.transaction():
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        conn.execute(statement)
    return int(row[0])


def fetch_segments(cluster: Cluster, first: str, last: str, dest: Path, size: int = 16 * MB) -> list[Path]:
    """Fetch segments ``first``..``last`` from the repository with ``pgdr wal-fetch``."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    name = SegmentName.parse(first, size)
    while name.name <= last:
        path = dest / name.name
        cluster.pgdr("wal-fetch", name.name, str(path))
        paths.append(path)
        name = name.next()
    return paths


def current_segment(cluster: Cluster) -> str:
    return str(cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])


def test_index_archived_segments_of_a_real_cluster(cluster: Cluster, tmp_path: Path) -> None:
    cluster.sql("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
    cluster.sql("CREATE TABLE audit (id int, note text)")
    cluster.sql("CREATE TABLE scratch (id int)")
    cluster.sql("INSERT INTO audit SELECT g, 'a' FROM generate_series(1, 100) g")
    cluster.sql("INSERT INTO scratch SELECT generate_series(1, 100)")
    first_segment = current_segment(cluster)

    insert_window = []
    for i in range(3):
        before = server_now(cluster)
        cluster.sql("INSERT INTO accounts VALUES (%s, 'x')", i)
        insert_window.append((before, server_now(cluster)))

    rp_before = server_now(cluster)
    cluster.sql("SELECT pg_create_restore_point('before_migration')")
    rp_after = server_now(cluster)

    rows = cluster.sql("SELECT pg_relation_filepath('accounts'), pg_relation_filepath('accounts_pkey')")
    accounts_paths = set(rows[0])
    ((audit_path, audit_oid),) = cluster.sql("SELECT pg_relation_filepath('audit'), 'audit'::regclass::oid")
    truncate_before = server_now(cluster)
    truncate_xid = in_transaction(cluster, "TRUNCATE accounts")
    drop_xid = in_transaction(cluster, "DROP TABLE audit")
    drop_after = server_now(cluster)
    cluster.sql("VACUUM FULL scratch")

    last_segment = cluster.switch_wal()
    cluster.wait_archived(last_segment)
    indexes = [index_segment(p, PG_WALDUMP) for p in fetch_segments(cluster, first_segment, last_segment, tmp_path)]

    assert indexes[-1].tail_complete  # the switched segment ends with its switch record
    assert all(i.stop_reason is None for i in indexes)
    commits = [i for i in indexes if i.commits]
    first_commit, last_commit = commits[0].first_commit, commits[-1].last_commit
    assert first_commit is not None and last_commit is not None
    assert sum(i.commits for i in indexes) >= 6  # 3 inserts, TRUNCATE, DROP, VACUUM FULL

    events = [e for i in indexes for e in i.events]
    (point,) = [e for e in events if e.kind == "restore_point"]
    assert point.name == "before_migration"
    assert point.time_source == "record"  # rp_time read from the record's bytes
    assert point.time is not None and rp_before <= point.time <= rp_after

    (truncate,) = [e for e in events if e.kind == "truncate"]
    assert truncate.xid == truncate_xid
    assert accounts_paths <= set(truncate.relations)
    (drop,) = [e for e in events if e.kind == "drop"]
    assert drop.xid == drop_xid
    assert audit_path in drop.relations and audit_oid in drop.oids
    for event in (truncate, drop):
        assert event.time is not None and truncate_before <= event.time <= drop_after
        assert point.lsn < event.lsn
    assert truncate.time is not None and drop.time is not None and truncate.time <= drop.time
    assert [e.kind for e in events if e.kind == "rewrite"] == ["rewrite"]  # VACUUM FULL scratch
    # the commit times bracket what happened: the first insert had committed by the end of its
    # statement, and the DROP and VACUUM FULL committed at the end
    assert first_commit <= insert_window[0][1]
    assert last_commit >= drop.time >= insert_window[-1][0]

    for index in indexes:
        assert SegmentIndex.from_json(json.loads(json.dumps(index.to_json()))) == index


@pytest.fixture
def small_segments(shared_dir: Path, pgdr_for_server: Path) -> Iterator[Cluster]:
    """A cluster with 1 MiB WAL segments, so records spanning segments are cheap to make."""
    with running_cluster(shared_dir, pgdr_for_server, segment_mb=1) as c:
        c.write_config(c.base_config())
        c.start()
        yield c


def test_records_crossing_segment_boundaries(small_segments: Cluster, tmp_path: Path) -> None:
    """A record crossing into the next segments is decoded with them; a segment holding only the middle
    of a huge record is empty; a partial segment ends at the end of valid WAL."""
    cluster, size = small_segments, MB
    (lsn,) = cluster.sql("SELECT pg_current_wal_lsn()")[0]
    here = SegmentName.containing(1, parse_lsn(str(lsn)), size)
    gap = here.next().start_lsn - parse_lsn(str(lsn))
    # one record from here to 1000 bytes into the next segment, then one spanning the segment after
    cluster.sql("SELECT pg_logical_emit_message(false, 'pgdr', repeat('x', %s))", gap + 1000)
    cluster.sql("SELECT pg_logical_emit_message(false, 'pgdr', repeat('y', %s))", 2 * size + size // 2)
    cluster.sql("SELECT pg_create_restore_point('after_messages')")
    last = cluster.switch_wal()
    cluster.wait_archived(last)
    paths = fetch_segments(cluster, here.name, last, tmp_path / "all", size)
    assert len(paths) == 4  # first message; its tail + the second; the second's middle; its tail + restore point

    without_next = index_segment(alone(paths[0], tmp_path), PG_WALDUMP)
    with_next = index_segment(paths[0], PG_WALDUMP)  # the next segment lies beside it
    assert not without_next.tail_complete
    assert with_next.tail_complete
    assert without_next.last_record_lsn is not None and with_next.last_record_lsn is not None
    assert with_next.records == without_next.records + 1
    assert without_next.last_record_lsn < with_next.last_record_lsn < here.next().start_lsn

    # starts with the first message's tail; its one record (the second message) ends two segments on
    second = index_segment(paths[1], PG_WALDUMP)
    assert (second.records, second.tail_complete) == (1, True)
    second_alone = index_segment(alone(paths[1], tmp_path), PG_WALDUMP)
    assert (second_alone.records, second_alone.tail_complete, second_alone.stop_reason) == (0, False, None)
    middle = index_segment(paths[2], PG_WALDUMP)
    assert (middle.records, middle.tail_complete, middle.stop_reason) == (0, True, None)
    tail = index_segment(paths[3], PG_WALDUMP)
    assert [(e.name, e.time_source) for e in tail.restore_points()] == [("after_messages", "record")]
    assert tail.tail_complete

    # the server's in-progress segment, as a .partial: valid WAL ends inside it
    cluster.sql("CREATE TABLE after_switch (id int)")
    live = current_segment(cluster)
    assert live > last
    partial = tmp_path / "live" / f"{live}.partial"
    partial.parent.mkdir()
    partial.write_bytes((cluster.data_dir / "pg_wal" / live).read_bytes())
    index = index_segment(partial, PG_WALDUMP)
    assert index.stop_reason is not None and "invalid record length" in index.stop_reason
    assert index.records >= 1 and not index.tail_complete


def alone(path: Path, tmp_path: Path) -> Path:
    """A copy of segment ``path`` in a folder of its own."""
    folder = tmp_path / f"alone-{path.name}"
    folder.mkdir()
    (folder / path.name).write_bytes(path.read_bytes())
    return folder / path.name


def test_index_segment_reports_failures(tmp_path: Path) -> None:
    zeros = tmp_path / "000000010000000000000009"
    zeros.write_bytes(bytes(8192))
    with pytest.raises(WalIndexError, match="not a PostgreSQL 15 WAL segment"):
        index_segment(zeros, PG_WALDUMP)
    with pytest.raises(WalIndexError, match="not a WAL segment file name"):
        index_segment(tmp_path / "notes.txt", PG_WALDUMP)
    with pytest.raises(WalIndexError, match="cannot read WAL segment"):
        index_segment(tmp_path / "00000001000000000000000A", PG_WALDUMP)


def test_the_timeline_indexes_what_nothing_indexed_with_the_next_segment_at_hand(cluster: Cluster) -> None:
    """Segments without entries (the background indexer had not run) are indexed by the command that
    needs them; a record running into the next segment is completed from it in the same pass."""
    cluster.sql("CREATE TABLE filler (id int, note text)")
    first = current_segment(cluster)
    cluster.sql("INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 150000) g")
    last = cluster.switch_wal()
    cluster.wait_archived(last)
    cluster.pgdr("wal-upload")  # let the background indexer finish, then forget its work
    shutil.rmtree(cluster.local_repo / "main" / "walindex")

    cfg = load_config(cluster.config_path)
    repos = open_repositories(cfg)
    catalog = read_catalog(repos)
    indexes = ensure_indexes(cfg, repos, catalog.columns, catalog.segment_size)
    names = [name for name in catalog.columns[0].names if first <= name <= last]
    assert len(names) >= 3
    assert (indexes.unreadable, indexes.pending) == (0, 0) and indexes.indexed >= len(names)
    assert all(indexes[name].tail_complete for name in names)
    assert all(indexes[name].commits for name in names[-1:])
    assert all((cluster.local_repo / "main" / index_key(name)).exists() for name in names)
