"""Tests for backend.walindex: pg_waldump output parsed from captured text, and real archived segments.

The captured lines are PostgreSQL 15.18 pg_waldump output (run with TZ=UTC) from a scratch cluster,
verbatim except that long "inval msgs" lists are cut short, trailing blanks are stripped, repetitive
catalog Heap/Btree records are thinned out, and so are other transactions' records (autovacuum, pruning).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.archive.index import ensure_indexes, index_key
from backend.catalog import read_catalog
from backend.config import load_config
from backend.recovery import load_view
from backend.repository import open_repositories
from backend.walindex import (
    SegmentHeader,
    SegmentIndex,
    WalEvent,
    WalIndexError,
    XidFate,
    XidRuns,
    index_segment,
    parse_waldump,
    read_segment_header,
    restore_point_time,
)
from backend.walnames import SegmentName, parse_lsn
from tests.conftest import on_every_version
from tests.harness.cluster import PG_BIN, Cluster, give_to_server_user, running_cluster

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

# Statements that rewrite, move or drop relations: REFRESH MATERIALIZED VIEW gmv (818), DROP VIEW gvw (819,
# OID 16748), VACUUM FULL g1 (820), one transaction doing ALTER TABLE g3 ALTER COLUMN id TYPE bigint (a
# rewrite) and DROP TABLE gsmall (OID 16757) (821), ALTER TABLE g1 SET TABLESPACE ts (822; its toast table
# is empty, so gets no page image), REFRESH MATERIALIZED VIEW CONCURRENTLY gmv (823: temporary tables).
CAPTURED_REWRITES = """\
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C82F68, prev 0/01C82EF0, desc: LOCK xid 818 db 5 rel 16741
rmgr: Heap        len (rec/tot):     65/  6921, tx:        818, lsn: 0/01C82F98, prev 0/01C82F68, desc: HOT_UPDATE off 12 xmax 818 flags 0x00 ; new off 32 xmax 0, blkref #0: rel 1663/5/1259 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C84AC0, prev 0/01C82F98, desc: LOCK xid 818 db 5 rel 16760
rmgr: Storage     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C84AF0, prev 0/01C84AC0, desc: CREATE base/5/16760
rmgr: Heap        len (rec/tot):     54/  7174, tx:        818, lsn: 0/01C90848, prev 0/01C8EBC0, desc: INSERT off 1 flags 0x01, blkref #0: rel 1663/5/1259 blk 1 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C9AB60, prev 0/01C9AB18, desc: LOCK xid 818 db 5 rel 16763
rmgr: Storage     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C9AB90, prev 0/01C9AB60, desc: CREATE base/5/16763
rmgr: Heap        len (rec/tot):    203/   203, tx:        818, lsn: 0/01C9ABC0, prev 0/01C9AB90, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/1259 blk 1
rmgr: Storage     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C9B720, prev 0/01C9B6E0, desc: CREATE base/5/16764
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01C9B750, prev 0/01C9B720, desc: LOCK xid 818 db 5 rel 16764
rmgr: Heap        len (rec/tot):    203/   203, tx:        818, lsn: 0/01C9B780, prev 0/01C9B750, desc: INSERT off 4 flags 0x00, blkref #0: rel 1663/5/1259 blk 1
rmgr: XLOG        len (rec/tot):     49/   137, tx:        818, lsn: 0/01C9F8E8, prev 0/01C9F8A0, desc: FPI , blkref #0: rel 1663/5/16764 blk 0 FPW
rmgr: Heap        len (rec/tot):     61/    61, tx:        818, lsn: 0/01C9FC30, prev 0/01C9FBE8, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16760 blk 0
rmgr: Heap        len (rec/tot):     61/    61, tx:        818, lsn: 0/01C9FC70, prev 0/01C9FC30, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16760 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01CA3428, prev 0/01CA33E0, desc: LOCK xid 818 db 5 rel 16747
rmgr: Storage     len (rec/tot):     42/    42, tx:        818, lsn: 0/01CA3458, prev 0/01CA3428, desc: CREATE base/5/16765
rmgr: Heap        len (rec/tot):     94/    94, tx:        818, lsn: 0/01CA3488, prev 0/01CA3458, desc: UPDATE off 13 xmax 818 flags 0x60 ; new off 34 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: XLOG        len (rec/tot):     49/  2089, tx:        818, lsn: 0/01CA35B0, prev 0/01CA3570, desc: FPI , blkref #0: rel 1663/5/16765 blk 1 FPW
rmgr: XLOG        len (rec/tot):     49/   137, tx:        818, lsn: 0/01CA3DE0, prev 0/01CA35B0, desc: FPI , blkref #0: rel 1663/5/16765 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01CA3FF0, prev 0/01CA3F30, desc: LOCK xid 818 db 5 rel 16744
rmgr: Standby     len (rec/tot):     42/    42, tx:        818, lsn: 0/01CA4038, prev 0/01CA3FF0, desc: LOCK xid 818 db 5 rel 16745
rmgr: Heap        len (rec/tot):     54/    54, tx:        818, lsn: 0/01CA61F0, prev 0/01CA61B8, desc: DELETE off 9 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1259 blk 0
rmgr: Transaction len (rec/tot):   2593/  2593, tx:        818, lsn: 0/01CA8920, prev 0/01CA88E0, desc: COMMIT 2026-12-07 14:18:09.583619 UTC; rels: base/5/16741 base/5/16744 base/5/16745 base/5/16747; dropped stats: 2/5/16745 2/5/16744 2/5/16760; inval msgs: catcache 55 catcache 54 catcache 80 catcache 79
rmgr: Standby     len (rec/tot):     42/    42, tx:        819, lsn: 0/01CA93F8, prev 0/01CA9380, desc: LOCK xid 819 db 5 rel 16748
rmgr: Heap        len (rec/tot):     59/  7267, tx:        819, lsn: 0/01CB0100, prev 0/01CB00C8, desc: DELETE off 22 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1259 blk 0 FPW
rmgr: Transaction len (rec/tot):    309/   309, tx:        819, lsn: 0/01CB1DA0, prev 0/01CB1D68, desc: COMMIT 2026-12-07 14:18:09.816333 UTC; dropped stats: 2/5/16748; inval msgs: catcache 58 catcache 80 catcache 79 catcache 80
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CB1F88, prev 0/01CB1F10, desc: LOCK xid 820 db 5 rel 16734
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CB1FB8, prev 0/01CB1F88, desc: LOCK xid 820 db 5 rel 16766
rmgr: Storage     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CB1FE8, prev 0/01CB1FB8, desc: CREATE base/5/16766
rmgr: Heap        len (rec/tot):     54/  6682, tx:        820, lsn: 0/01CBDEA8, prev 0/01CBC220, desc: INSERT off 1 flags 0x01, blkref #0: rel 1663/5/1259 blk 6 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CC9188, prev 0/01CC9140, desc: LOCK xid 820 db 5 rel 16769
rmgr: Storage     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CC91B8, prev 0/01CC9188, desc: CREATE base/5/16769
rmgr: Heap        len (rec/tot):    203/   203, tx:        820, lsn: 0/01CC91E8, prev 0/01CC91B8, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/1259 blk 6
rmgr: Storage     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CC9D90, prev 0/01CC9D48, desc: CREATE base/5/16770
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CC9DC0, prev 0/01CC9D90, desc: LOCK xid 820 db 5 rel 16770
rmgr: Heap        len (rec/tot):    203/   203, tx:        820, lsn: 0/01CC9DF0, prev 0/01CC9DC0, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/1259 blk 6
rmgr: XLOG        len (rec/tot):     49/   137, tx:        820, lsn: 0/01CCE050, prev 0/01CCDFF0, desc: FPI , blkref #0: rel 1663/5/16770 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CCE398, prev 0/01CCE350, desc: LOCK xid 820 db 5 rel 16737
rmgr: XLOG        len (rec/tot):     49/  3673, tx:        820, lsn: 0/01CCE3C8, prev 0/01CCE398, desc: FPI , blkref #0: rel 1663/5/16766 blk 0 FPW
rmgr: Heap        len (rec/tot):     86/    86, tx:        820, lsn: 0/01CCF228, prev 0/01CCE3C8, desc: HOT_UPDATE off 4 xmax 820 flags 0x60 ; new off 5 xmax 0, blkref #0: rel 1663/5/1259 blk 6
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CD2E70, prev 0/01CD2E30, desc: LOCK xid 820 db 5 rel 16738
rmgr: Heap        len (rec/tot):     79/    79, tx:        820, lsn: 0/01CD2EA0, prev 0/01CD2E70, desc: UPDATE off 4 xmax 820 flags 0x60 ; new off 11 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CD30F0, prev 0/01CD30B0, desc: LOCK xid 820 db 5 rel 16739
rmgr: Storage     len (rec/tot):     42/    42, tx:        820, lsn: 0/01CD3120, prev 0/01CD30F0, desc: CREATE base/5/16771
rmgr: Heap        len (rec/tot):     94/    94, tx:        820, lsn: 0/01CD3150, prev 0/01CD3120, desc: UPDATE off 6 xmax 820 flags 0x60 ; new off 12 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: XLOG        len (rec/tot):     49/  2089, tx:        820, lsn: 0/01CD3278, prev 0/01CD3238, desc: FPI , blkref #0: rel 1663/5/16771 blk 1 FPW
rmgr: XLOG        len (rec/tot):     49/   137, tx:        820, lsn: 0/01CD3AA8, prev 0/01CD3278, desc: FPI , blkref #0: rel 1663/5/16771 blk 0 FPW
rmgr: Transaction len (rec/tot):   2561/  2561, tx:        820, lsn: 0/01CD42D8, prev 0/01CD42A0, desc: COMMIT 2026-12-07 14:18:10.177822 UTC; rels: base/5/16734 base/5/16737 base/5/16738 base/5/16739; dropped stats: 2/5/16770 2/5/16769 2/5/16766; inval msgs: catcache 80 catcache 79 catcache 80 catcache 79
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CD6A08, prev 0/01CD6990, desc: LOCK xid 821 db 5 rel 16752
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CD84E0, prev 0/01CD6A38, desc: LOCK xid 821 db 5 rel 16772
rmgr: Storage     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CD8510, prev 0/01CD84E0, desc: CREATE base/5/16772
rmgr: Heap        len (rec/tot):     54/  7078, tx:        821, lsn: 0/01CE47F8, prev 0/01CE2B38, desc: INSERT off 2 flags 0x01, blkref #0: rel 1663/5/1259 blk 7 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CF0A38, prev 0/01CF09D8, desc: LOCK xid 821 db 5 rel 16775
rmgr: Storage     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CF0A68, prev 0/01CF0A38, desc: CREATE base/5/16775
rmgr: Heap        len (rec/tot):    203/   203, tx:        821, lsn: 0/01CF0A98, prev 0/01CF0A68, desc: INSERT off 4 flags 0x00, blkref #0: rel 1663/5/1259 blk 7
rmgr: Storage     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CF15F8, prev 0/01CF15B8, desc: CREATE base/5/16776
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CF1628, prev 0/01CF15F8, desc: LOCK xid 821 db 5 rel 16776
rmgr: Heap        len (rec/tot):    203/   203, tx:        821, lsn: 0/01CF1658, prev 0/01CF1628, desc: INSERT off 6 flags 0x00, blkref #0: rel 1663/5/1259 blk 7
rmgr: XLOG        len (rec/tot):     49/   137, tx:        821, lsn: 0/01CF59B8, prev 0/01CF5970, desc: FPI , blkref #0: rel 1663/5/16776 blk 0 FPW
rmgr: Heap        len (rec/tot):     65/    65, tx:        821, lsn: 0/01CF5D00, prev 0/01CF5CB8, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16772 blk 0
rmgr: Heap        len (rec/tot):     65/    65, tx:        821, lsn: 0/01CF5D48, prev 0/01CF5D00, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16772 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CFC6A8, prev 0/01CFC660, desc: LOCK xid 821 db 5 rel 16755
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CFC6D8, prev 0/01CFC6A8, desc: LOCK xid 821 db 5 rel 16756
rmgr: Heap        len (rec/tot):     54/    54, tx:        821, lsn: 0/01CFC890, prev 0/01CFC858, desc: DELETE off 26 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1259 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        821, lsn: 0/01CFF150, prev 0/01CFF110, desc: LOCK xid 821 db 5 rel 16757
rmgr: Heap        len (rec/tot):     54/    54, tx:        821, lsn: 0/01CFF3E8, prev 0/01CFF3B0, desc: DELETE off 30 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1259 blk 0
rmgr: Transaction len (rec/tot):   2845/  2845, tx:        821, lsn: 0/01CFF458, prev 0/01CFF420, desc: COMMIT 2026-12-07 14:18:10.537708 UTC; rels: base/5/16757 base/5/16752 base/5/16755 base/5/16756; dropped stats: 2/5/16756 2/5/16755 2/5/16772 2/5/16757; inval msgs: catcache 7 catcache 6 catcache 80 catcache 79
rmgr: Standby     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D00040, prev 0/01CFFFB0, desc: LOCK xid 822 db 5 rel 16734
rmgr: Standby     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D00070, prev 0/01D00040, desc: LOCK xid 822 db 5 rel 16737
rmgr: Storage     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D000A0, prev 0/01D00070, desc: CREATE pg_tblspc/16402/PG_15_202209061/5/16777
rmgr: XLOG        len (rec/tot):     49/  8241, tx:        822, lsn: 0/01D000D0, prev 0/01D000A0, desc: FPI , blkref #0: rel 16402/5/16777 blk 0 FPW
rmgr: Heap        len (rec/tot):     65/  6217, tx:        822, lsn: 0/01D02120, prev 0/01D000D0, desc: UPDATE off 35 xmax 822 flags 0x00 ; new off 32 xmax 0, blkref #0: rel 1663/5/1259 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D06A18, prev 0/01D067A8, desc: LOCK xid 822 db 5 rel 16737
rmgr: Storage     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D06A48, prev 0/01D06A18, desc: CREATE pg_tblspc/16402/PG_15_202209061/5/16778
rmgr: Heap        len (rec/tot):     84/    84, tx:        822, lsn: 0/01D06A78, prev 0/01D06A48, desc: UPDATE off 10 xmax 822 flags 0x60 ; new off 37 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D07FC8, prev 0/01D07F88, desc: LOCK xid 822 db 5 rel 16738
rmgr: Storage     len (rec/tot):     42/    42, tx:        822, lsn: 0/01D07FF8, prev 0/01D07FC8, desc: CREATE pg_tblspc/16402/PG_15_202209061/5/16779
rmgr: XLOG        len (rec/tot):     49/  8241, tx:        822, lsn: 0/01D08040, prev 0/01D07FF8, desc: FPI , blkref #0: rel 16402/5/16779 blk 0 FPW
rmgr: Heap        len (rec/tot):     84/    84, tx:        822, lsn: 0/01D0A090, prev 0/01D08040, desc: UPDATE off 11 xmax 822 flags 0x60 ; new off 38 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Transaction len (rec/tot):    234/   234, tx:        822, lsn: 0/01D0A1C0, prev 0/01D0A180, desc: COMMIT 2026-12-07 14:18:10.680090 UTC; rels: base/5/16770 base/5/16769 base/5/16766; inval msgs: catcache 55 catcache 54 catcache 55 catcache 54
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D0BDC0, prev 0/01D0A360, desc: LOCK xid 823 db 5 rel 16780
rmgr: Heap        len (rec/tot):     54/  8230, tx:        823, lsn: 0/01D18180, prev 0/01D164A8, desc: INSERT off 66 flags 0x01, blkref #0: rel 1663/5/1259 blk 12 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D22B20, prev 0/01D22AD8, desc: LOCK xid 823 db 5 rel 16783
rmgr: Heap        len (rec/tot):     54/  5742, tx:        823, lsn: 0/01D22B50, prev 0/01D22B20, desc: INSERT off 5 flags 0x01, blkref #0: rel 1663/5/1259 blk 13 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D25098, prev 0/01D25058, desc: LOCK xid 823 db 5 rel 16784
rmgr: Heap        len (rec/tot):    203/   203, tx:        823, lsn: 0/01D250C8, prev 0/01D25098, desc: INSERT off 8 flags 0x00, blkref #0: rel 1663/5/1259 blk 13
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D2B4A8, prev 0/01D2B3E8, desc: LOCK xid 823 db 5 rel 16785
rmgr: Heap        len (rec/tot):    203/   203, tx:        823, lsn: 0/01D2B978, prev 0/01D2B930, desc: INSERT off 21 flags 0x00, blkref #0: rel 1663/5/1259 blk 13
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D2C638, prev 0/01D2C5F0, desc: LOCK xid 823 db 5 rel 16788
rmgr: Heap        len (rec/tot):    203/   203, tx:        823, lsn: 0/01D2C668, prev 0/01D2C638, desc: INSERT off 29 flags 0x00, blkref #0: rel 1663/5/1259 blk 13
rmgr: Standby     len (rec/tot):     42/    42, tx:        823, lsn: 0/01D2D1C8, prev 0/01D2D188, desc: LOCK xid 823 db 5 rel 16789
rmgr: Heap        len (rec/tot):    203/   203, tx:        823, lsn: 0/01D2D1F8, prev 0/01D2D1C8, desc: INSERT off 32 flags 0x00, blkref #0: rel 1663/5/1259 blk 13
rmgr: Transaction len (rec/tot):   4337/  4337, tx:        823, lsn: 0/01D306A0, prev 0/01D30668, desc: COMMIT 2026-12-07 14:18:10.814305 UTC; dropped stats: 2/5/16789 2/5/16788 2/5/16785 2/5/16784 2/5/16783 2/5/16780; inval msgs: catcache 55 catcache 54 catcache 80 catcache 79
"""  # noqa: E501

# One transaction: TRUNCATE hstage (OID 16797), then REFRESH MATERIALIZED VIEW hmv (OID 16802) (827). A
# nightly load's shape: when its TRUNCATE lies in an earlier segment, the REFRESH must not hide it.
CAPTURED_TRUNCATE_AND_REFRESH = """\
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D62560, prev 0/01D624E8, desc: LOCK xid 827 db 5 rel 16797
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D62590, prev 0/01D62560, desc: CREATE base/5/16808
rmgr: Heap        len (rec/tot):     65/  7453, tx:        827, lsn: 0/01D625C0, prev 0/01D62590, desc: UPDATE off 48 xmax 827 flags 0x00 ; new off 61 xmax 0, blkref #0: rel 1663/5/1259 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D68290, prev 0/01D67368, desc: LOCK xid 827 db 5 rel 16800
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D682C0, prev 0/01D68290, desc: CREATE base/5/16809
rmgr: Heap        len (rec/tot):    123/   123, tx:        827, lsn: 0/01D682F0, prev 0/01D682C0, desc: UPDATE off 44 xmax 827 flags 0x60 ; new off 54 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D69AB0, prev 0/01D69A70, desc: LOCK xid 827 db 5 rel 16801
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D69AE0, prev 0/01D69AB0, desc: CREATE base/5/16810
rmgr: Heap        len (rec/tot):     94/    94, tx:        827, lsn: 0/01D69B10, prev 0/01D69AE0, desc: UPDATE off 45 xmax 827 flags 0x60 ; new off 55 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: XLOG        len (rec/tot):     49/   137, tx:        827, lsn: 0/01D69C48, prev 0/01D69C08, desc: FPI , blkref #0: rel 1663/5/16810 blk 0 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D69CD8, prev 0/01D69C48, desc: LOCK xid 827 db 5 rel 16802
rmgr: Heap        len (rec/tot):     76/    76, tx:        827, lsn: 0/01D69D08, prev 0/01D69CD8, desc: HOT_UPDATE off 56 xmax 827 flags 0x20 ; new off 62 xmax 0, blkref #0: rel 1663/5/1259 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D69D58, prev 0/01D69D08, desc: LOCK xid 827 db 5 rel 16811
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D69D88, prev 0/01D69D58, desc: CREATE base/5/16811
rmgr: Heap        len (rec/tot):     54/  7970, tx:        827, lsn: 0/01D757C8, prev 0/01D73A48, desc: INSERT off 38 flags 0x00, blkref #0: rel 1663/5/1259 blk 5 FPW
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D7D9F0, prev 0/01D7D9A8, desc: LOCK xid 827 db 5 rel 16814
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D7DA20, prev 0/01D7D9F0, desc: CREATE base/5/16814
rmgr: Heap        len (rec/tot):    203/   203, tx:        827, lsn: 0/01D7DA50, prev 0/01D7DA20, desc: INSERT off 40 flags 0x00, blkref #0: rel 1663/5/1259 blk 5
rmgr: Storage     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D7E5C8, prev 0/01D7E588, desc: CREATE base/5/16815
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D7E5F8, prev 0/01D7E5C8, desc: LOCK xid 827 db 5 rel 16815
rmgr: Heap        len (rec/tot):     54/  6682, tx:        827, lsn: 0/01D7E628, prev 0/01D7E5F8, desc: INSERT off 4 flags 0x00, blkref #0: rel 1663/5/1259 blk 6 FPW
rmgr: XLOG        len (rec/tot):     49/   137, tx:        827, lsn: 0/01D848F8, prev 0/01D848B0, desc: FPI , blkref #0: rel 1663/5/16815 blk 0 FPW
rmgr: Heap        len (rec/tot):     61/    61, tx:        827, lsn: 0/01D84DD8, prev 0/01D84D90, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16811 blk 0
rmgr: Heap        len (rec/tot):     61/    61, tx:        827, lsn: 0/01D84E18, prev 0/01D84DD8, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16811 blk 0
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D85A10, prev 0/01D859C8, desc: LOCK xid 827 db 5 rel 16805
rmgr: Standby     len (rec/tot):     42/    42, tx:        827, lsn: 0/01D85A40, prev 0/01D85A10, desc: LOCK xid 827 db 5 rel 16806
rmgr: Heap        len (rec/tot):     54/    54, tx:        827, lsn: 0/01D85BF8, prev 0/01D85BC0, desc: DELETE off 53 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/1259 blk 0
rmgr: Transaction len (rec/tot):   2649/  2649, tx:        827, lsn: 0/01D864B0, prev 0/01D86460, desc: COMMIT 2026-12-07 14:20:58.535128 UTC; rels: base/5/16802 base/5/16805 base/5/16806 base/5/16801 base/5/16800 base/5/16797; dropped stats: 2/5/16806 2/5/16805 2/5/16811; inval msgs: catcache 55 catcache 54 catcache 55 catcache 54
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


def test_parse_rewrites_moves_and_drops_each_by_what_the_wal_shows() -> None:
    events = by_xid(parse_waldump(CAPTURED_REWRITES.splitlines()))

    assert {xid: e.kind for xid, e in events.items()} == {
        818: "rewrite",  # REFRESH: its transient heap was locked, then inserted into pg_class; the old toast pair
        819: "drop",  # DROP VIEW: locked, then deleted from pg_class
        820: "rewrite",  # VACUUM FULL: transient heap, toast and toast index; the index rebuilt from page images
        821: "drop",
        822: "rewrite",  # SET TABLESPACE: new relfilenodes in another tablespace, the empty toast one too
        823: "rewrite",  # REFRESH ... CONCURRENTLY: only temporary tables it created itself were dropped
    }
    view = events[819]
    assert (view.relations, view.oids) == ([], [16748])  # a view has no storage
    migration = events[821]  # the ALTER TABLE rewrite beside it is not counted as a drop
    assert migration.oids == [16757] and "base/5/16757" in migration.relations
    moved = events[822]
    assert sorted(moved.relations) == ["base/5/16766", "base/5/16769", "base/5/16770"]
    assert (events[823].relations, events[823].oids) == ([], [])
    assert [e.xid for e in events.values() if e.destructive] == [819, 821]
    assert all(e.time_source == "commit" and e.time is not None for e in events.values())


def commit_alone(captured: str, xid: int) -> WalEvent:
    commit = next(line for line in captured.splitlines() if f"tx: {xid:>10}," in line and "desc: COMMIT" in line)
    return by_xid(parse_waldump([commit]))[xid]


def test_parse_a_commit_whose_transaction_began_in_an_earlier_segment() -> None:
    """Only the commit at hand (its transaction's other records in an earlier segment): a drop still shows
    (a table's files are numbered from its OID up), but a TRUNCATE, a move and a VACUUM FULL whose index
    rebuild is not seen leave the same commit, and so do a DROP VIEW and REFRESH ... CONCURRENTLY: neutral
    labels, counted as destructive since they may be a TRUNCATE or a DROP VIEW."""
    assert commit_alone(CAPTURED_BASIC, 728).kind == "drop"
    assert commit_alone(CAPTURED_REWRITES, 821).kind == "drop"
    assert commit_alone(CAPTURED_BASIC, 727).kind == "relation_files_removed"  # TRUNCATE
    assert commit_alone(CAPTURED_REWRITES, 822).kind == "relation_files_removed"  # SET TABLESPACE
    assert commit_alone(CAPTURED_REWRITES, 820).kind == "relation_files_removed"  # VACUUM FULL
    for xid in (819, 823):  # DROP VIEW, REFRESH ... CONCURRENTLY
        assert commit_alone(CAPTURED_REWRITES, xid).kind == "relations_without_files_dropped"
    neutral = [commit_alone(CAPTURED_REWRITES, xid) for xid in (819, 820, 822, 823)]
    assert all(e.destructive for e in neutral)


def test_parse_what_a_segment_shows_of_a_transaction_that_began_before_it() -> None:
    """From VACUUM FULL's index rebuild on, every removed file is accounted for: a rewrite. From the
    REFRESH on, the TRUNCATE before it is not seen, and the files it removed are not accounted for: the
    REFRESH does not make the TRUNCATE a rewrite."""
    lines = CAPTURED_REWRITES.splitlines()
    rebuild = next(i for i, line in enumerate(lines) if "LOCK xid 820 db 5 rel 16739" in line)
    vacuum = [line for line in lines[rebuild:] if "tx:        820," in line]
    assert by_xid(parse_waldump(vacuum))[820].kind == "rewrite"

    lines = CAPTURED_TRUNCATE_AND_REFRESH.splitlines()
    assert by_xid(parse_waldump(lines))[827].kind == "truncate"
    refresh = next(i for i, line in enumerate(lines) if "LOCK xid 827 db 5 rel 16802" in line)
    assert by_xid(parse_waldump(lines[refresh:]))[827].kind == "relation_files_removed"


def test_parse_lists_the_transactions_that_ended() -> None:
    """Committed, committed as a subtransaction, aborted: ``--xid`` finds its segment by them."""
    basic = parse_waldump(CAPTURED_BASIC.splitlines()).xids
    assert basic is not None and (basic.low, basic.high) == (725, 731)
    assert basic.runs() == {
        "committed": [(725, 728), (730, 730)],
        "subtransaction": [],
        "aborted": [(729, 729), (731, 731)],
    }
    assert [basic.fate(x) for x in (724, 725, 728, 729, 730, 732)] == [
        None,
        "committed",
        "committed",
        "aborted",
        "committed",
        None,
    ]
    twophase = parse_waldump(CAPTURED_TRANSACTIONS.splitlines()).xids
    assert twophase is not None
    assert [twophase.fate(x) for x in (770, 771, 772, 773, 776)] == [
        "committed",  # COMMIT_PREPARED 770 (tx: 0 on the record)
        "committed",
        "subtransaction",  # released savepoint, listed under subxacts: on 771's commit
        "aborted",  # rolled-back savepoint
        "committed",
    ]
    assert SegmentIndex.from_json(json.loads(json.dumps(SegmentIndex("x", xids=twophase).to_json()))).xids == twophase


def test_xid_runs_stay_small_for_a_busy_segment() -> None:
    """Fifty thousand commits, a savepoint in every other transaction and a few aborts: a few hundred bytes."""
    committed = set(range(10_000, 110_000, 2)) - {20_000, 30_002}
    ended: dict[XidFate, set[int]] = {
        "committed": committed,
        "subtransaction": set(range(10_001, 110_000, 2)),
        "aborted": {20_000, 30_002},
    }
    runs = XidRuns.build(ended)
    assert len(runs.packed) < 600
    assert (runs.low, runs.high) == (10_000, 109_999)
    assert (runs.fate(10_000), runs.fate(10_001), runs.fate(20_000), runs.fate(109_998), runs.fate(110_000)) == (
        "committed",
        "subtransaction",
        "aborted",
        "committed",
        None,
    )
    assert XidRuns.from_json(json.loads(json.dumps(runs.to_json()))) == runs
    assert XidRuns.build({"committed": set()}) == XidRuns() and XidRuns().fate(0) is None
    assert SegmentIndex.from_json({"segment": "old"}).xids is None  # written before pgdr listed them


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


def test_events_are_on_the_timeline_of_the_segment_that_holds_them() -> None:
    """The same records in timeline 3's copy of a segment: the same events, on timeline 3, in the JSON too."""
    on_one = parse_waldump(CAPTURED_BASIC.splitlines(), "000000010000000000000001")
    on_three = parse_waldump(CAPTURED_BASIC.splitlines(), "000000030000000000000001")
    assert on_one.events and {e.timeline for e in on_one.events} == {1}
    assert [replace(e, timeline=1) for e in on_three.events] == on_one.events
    assert {e["timeline"] for e in on_three.to_json()["events"]} == {3}


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


@on_every_version
def test_events_label_each_statement_by_what_its_wal_shows(cluster: Cluster) -> None:
    """DROP TABLE, TRUNCATE, ALTER TABLE SET TABLESPACE, VACUUM FULL, REFRESH MATERIALIZED VIEW
    CONCURRENTLY and CLUSTER on a real server: each event the timeline lists is labelled as what it did,
    with its xid and commit time, and ``pgdr timeline --events`` lists each under that label; only the
    drop and the truncate lose rows (the console marks those alone)."""
    space = cluster.root / "elsewhere"
    space.mkdir()
    give_to_server_user(space)
    cluster.sql(f"CREATE TABLESPACE elsewhere LOCATION '{space}'")
    for table in ("dropped", "emptied", "moved", "vacuumed", "clustered"):
        cluster.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        cluster.sql(f"INSERT INTO {table} SELECT g, repeat('x', 20) FROM generate_series(1, 300) g")
    cluster.sql("CREATE MATERIALIZED VIEW totals AS SELECT id % 7 AS k, count(*) AS n FROM clustered GROUP BY 1")
    cluster.sql("CREATE UNIQUE INDEX ON totals (k)")  # REFRESH ... CONCURRENTLY needs one
    cluster.sql("INSERT INTO clustered VALUES (1000, 'new')")

    before = server_now(cluster)
    expected = {
        in_transaction(cluster, "DROP TABLE dropped"): "drop",
        in_transaction(cluster, "TRUNCATE emptied"): "truncate",
        in_transaction(cluster, "ALTER TABLE moved SET TABLESPACE elsewhere"): "rewrite",
        in_transaction(cluster, "REFRESH MATERIALIZED VIEW CONCURRENTLY totals"): "rewrite",
        in_transaction(cluster, "CLUSTER clustered USING clustered_pkey"): "rewrite",
    }
    cluster.sql("VACUUM FULL vacuumed")  # not in a transaction block: its xid is the one its new pg_class row carries
    expected[int(cluster.sql("SELECT xmin::text FROM pg_class WHERE relname = 'vacuumed'")[0][0])] = "rewrite"
    after = server_now(cluster)
    cluster.wait_archived(cluster.switch_wal())

    view = load_view(load_config(cluster.config_path))
    found = {e.xid: e for e in view.events if e.xid in expected}
    assert {xid: e.kind for xid, e in found.items()} == expected
    assert all(e.time is not None and before <= e.time <= after for e in found.values())
    assert [e.kind for e in view.events if e.destructive] == ["drop", "truncate"]

    listed = cluster.pgdr("timeline", "--events").stdout
    for xid, kind in expected.items():
        assert f"{kind} xid {xid} " in listed, listed


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
    with pytest.raises(WalIndexError, match="not a PostgreSQL WAL segment"):
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
