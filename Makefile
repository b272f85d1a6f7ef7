# bemi: PGXS build. C shims and C++17 core in one shared library.
EXTENSION = bemi
MODULE_big = bemi
# The install script is assembled from ext/, one file per area, in this order (a new file must be
# added here by hand, at the place its dependencies allow). SQL-language function bodies are checked
# when they are created, so a file comes after every file whose objects its bodies name:
#  core.sql       the schema, bemi.changes, bemi.gaps, bemi.progress, context and status functions:
#                 everything else is built on them.
#  ddl_guard.sql  comments on bemi.gaps (core.sql) for the rows src/context/ddl_guard.cpp writes.
#  access.sql     bemi.tracking, who may read which changes (src/fn/readable.cpp), and the
#                 SECURITY DEFINER readers of bemi.changes: everything below reads through them.
#  rules.sql      bemi.rules (read by the output plugin, src/decoding/rules.cpp), bemi_admin and
#                 the functions that change rules. Names only core.sql's objects; comes before
#                 history.sql so that history, time travel and reverts can read the rules.
#  history.sql    bemi_diff, bemi_primary_key, the bemi_change type and bemi._change (one row of
#                 the trail as the functions return it), history and grouping.
#  time_travel.sql bemi_as_of and friends; their bodies call history.sql's functions.
#  revert.sql     reverts and roll-forward; call history.sql's and time_travel.sql's functions.
#  retention.sql  partitions and retention; bemi._trail_starts_at() (LANGUAGE sql) updates
#                 bemi.tracking (access.sql).
#  snapshot.sql   bemi.snapshots and bemi_snapshot (src/worker/snapshot.c); queues the snapshots
#                 of bemi.snapshot_on_create with bemi._user_tables (core.sql). Before start.sql,
#                 so that the worker finds them when it starts.
#  destination.sql bemi_set_destination and the role bemi_ingest of a destination, with its grants
#                 and bemi._ingest, bemi._ingest_rows (the rows its sources send, src/fn/ingest_shim.c)
#                 on core.sql's tables (after rules.sql: the grants on schema bemi come in the order
#                 the upgrade step makes them).
#  chain.sql      the hash chain's anchors (written by retention.sql's functions when they run),
#                 bemi_verify and bemi_chain_head; reads core.sql's bemi.changes.
EXT_SQL = ext/core.sql ext/ddl_guard.sql ext/access.sql ext/rules.sql ext/history.sql ext/time_travel.sql ext/revert.sql \
          ext/retention.sql ext/snapshot.sql ext/destination.sql ext/chain.sql ext/start.sql
# The version is set in bemi.control (default_version) and nowhere else.
EXTVERSION = $(shell sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" bemi.control)
DATA_built = bemi--$(EXTVERSION).sql
# Released install and upgrade scripts, frozen (never edited): ext/versions/, outside EXT_SQL.
DATA = $(wildcard ext/versions/bemi--*.sql)
PGFILEDESC = "bemi - context-aware audit trail for PostgreSQL"

C_SRCS   = $(wildcard src/*.c src/*/*.c)
CXX_SRCS = $(wildcard src/*.cpp src/*/*.cpp)
OBJS     = $(C_SRCS:.c=.o) $(CXX_SRCS:.cpp=.o)

PG_CONFIG ?= pg_config
PG_INCLUDE_SERVER := $(shell $(PG_CONFIG) --includedir-server)

# PostgreSQL headers are system headers: our warnings are errors, theirs are not ours.
PG_CPPFLAGS = -Iinclude -isystem $(PG_INCLUDE_SERVER)
PG_CFLAGS   = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
              -Wno-declaration-after-statement
BEMI_CXXFLAGS = -std=c++17 -fPIC -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
                -Wno-missing-field-initializers -fno-omit-frame-pointer
SHLIB_LINK += -lfmt -lstdc++
# libpq: the worker writes to a remote destination (src/worker/remote.cpp). PGXS's $(libpq) and
# $(libpq_srcdir) name the server's own (the wheels of other majors carry theirs).
SHLIB_LINK_INTERNAL += $(libpq)
PG_CPPFLAGS += -isystem $(libpq_srcdir)

# pg_regress: one file per behaviour, on a temporary instance with our settings. All files run in
# one database, in this order, each on what the files before it left. misconfig must stay last:
# it drops the extension (bemi.changes, its id sequence, context and retention settings and the
# worker go with it), makes CREATE EXTENSION fail, then installs afresh. And test/run-all leaves
# it out on servers without output_plugin_libraries, so a file after it would start from a
# different trail on different servers. Last, it changes nothing any other file sees. (Today's
# files do pass with it second: none relies on the trail before it; keep it that way anyway.)
REGRESS = boundary context comment comment_messages capture images images_xml ddl partitions truncate plugin status bemi_trigger security history as_of primary_key revert retention security_decoding security_ddl security_identity security_names security_history security_time_travel rules rules_revert rules_rename hmac protect snapshot destination ingest ddl_events ddl_time_travel chain misconfig
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=test/regress.conf --load-extension=bemi
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# No JIT bitcode: it would need clang, and nothing here benefits from inlining into JIT code.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The TAP files share test/perl/BemiTest.pm (a node with bemi's settings, wait_bemi); prove runs
# from the source directory, so the path is relative to it. After PGXS, which sets PG_PROVE_FLAGS.
PG_PROVE_FLAGS += -I test/perl


%.o: %.cpp
	$(CXX) $(BEMI_CXXFLAGS) $(CPPFLAGS) -c -o $@ $<

$(OBJS): $(wildcard include/bemi/*.h include/bemi/*.hpp src/*/*.hpp)

# The columns of a bemi_change, from a bemi.changes row `c`: the one list the history functions
# share (ext/history.sql says why it is substituted rather than a function).
BEMI_CHANGE_COLUMNS = c.id, c.schema, c."table", c.primary_key, c.operation, @extschema@.bemi_diff(c."before", c."after"), c."before", c."after", c.context, c.committed_at, c.transaction_id, c.position

bemi--$(EXTVERSION).sql: $(EXT_SQL) Makefile
	cat $(EXT_SQL) | sed 's|@BEMI_CHANGE_COLUMNS@|$(BEMI_CHANGE_COLUMNS)|g' > $@

# The TAP suite alone (installcheck runs it after pg_regress).
.PHONY: tapcheck
tapcheck:
	$(prove_installcheck)

.PHONY: test demo format
test:
	./test/run-all

demo:
	./demo/run

# Formats the C++ (src/*/*.cpp, src/*/*.hpp) with .clang-format (Debian: apt-get install
# clang-format). The C files and include/bemi/*.h keep PostgreSQL's layout (pgindent), which
# clang-format does not reproduce, so they are left alone.
CLANG_FORMAT ?= clang-format
format:
	$(CLANG_FORMAT) -i $(wildcard src/*.cpp src/*/*.cpp src/*.hpp src/*/*.hpp include/bemi/*.hpp)

# The comment scanner, fuzzed on its own under sanitizers (no server needed).
test/fuzz/comment_fuzz: test/fuzz/comment_fuzz.cpp src/context/comment_scan.cpp include/bemi/comment_scan.h
	$(CXX) -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror \
		-Iinclude -o $@ test/fuzz/comment_fuzz.cpp src/context/comment_scan.cpp

.PHONY: fuzzcheck
fuzzcheck: test/fuzz/comment_fuzz
	./test/fuzz/comment_fuzz 300000
