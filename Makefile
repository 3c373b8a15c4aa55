# eds: enterprise data services for a PostgreSQL loan platform (PGXS build)

EXTENSION    = eds
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" eds.control)
MODULE_big   = eds
OBJS         = src/eds.o src/util.o src/audit.o src/row_jsonb.o src/updated_at.o src/drop_guard.o src/capture.o \
               src/remote.o src/etl.o src/worker.o src/progress.o src/source.o src/reconcile.o src/lagworker.o src/encodable.o \
               src/worker_pool.o src/continuous.o
DATA         = eds--1.0.sql eds--1.0--1.1.sql
# The install script of the current version is the released 1.0 script
# followed by the upgrade scripts, so a fresh install and an upgraded
# database are built by the same statements (docs/architecture.md).
DATA_built   = eds--1.1.sql
EXTRA_CLEAN  = eds--1.1.sql
PGFILEDESC   = "eds - loan platform audit, ETL and replication health"

# Tests: pg_regress per topic, isolation specs, TAP. Every suite needs eds and
# pg_cron preloaded, so the SQL suites run on a temporary instance.
REGRESS      = schema audit post_payment generator privileges etl health security drop_guard
REGRESS_OPTS = --temp-config=$(srcdir)/test/eds-regress.conf --temp-instance=./tmp_check_regress --load-extension=eds
ISOLATION    = read_committed repeatable_read serializable for_update post_payment_race etl_one_at_a_time
ISOLATION_OPTS = --temp-config=$(srcdir)/test/eds-regress.conf --temp-instance=./tmp_check_iso --load-extension=eds
TAP_TESTS    = 1

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)

PG_CPPFLAGS  = -I$(libpq_srcdir) -Isrc
PG_CFLAGS    = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror=implicit-function-declaration
SHLIB_LINK_INTERNAL = $(libpq)

include $(PGXS)

eds--1.1.sql: eds--1.0.sql eds--1.0--1.1.sql
	{ echo '/* eds--1.1.sql: install script of eds 1.1, built by make from eds--1.0.sql and eds--1.0--1.1.sql; do not edit */'; \
	  sed -e '1d' eds--1.0.sql; \
	  sed -e '1,/^\\echo /d' eds--1.0--1.1.sql; } > $@

# ---- project commands (the README's two commands) -------------------------
.PHONY: demo test bench bootstrap dist fuzz

bootstrap:
	bin/eds-bootstrap

demo:
	bin/eds-demo

test:
	bin/eds-test

# Benchmarks against the dblink pipeline and the COPY limit
# (docs/performance.md): make bench [SCALE=S|M|L|XL] [REPS=3]
SCALE ?= M
REPS ?= 3
bench:
	bin/eds-bootstrap
	$(MAKE) -s
	if [ "$$(id -u)" -eq 0 ]; then $(MAKE) -s install; else sudo $(MAKE) -s install; fi
	bench/run --scale $(SCALE) --reps $(REPS)

# The ETL's differential property test (docs/etl.md): random source
# histories, the incremental warehouse against a fresh full load.
# make fuzz [SEEDS=1000] [START=1]; make test runs 200 seeds.
SEEDS ?= 1000
START ?= 1
fuzz:
	bin/eds-bootstrap
	$(MAKE) -s
	if [ "$$(id -u)" -eq 0 ]; then $(MAKE) -s install; else sudo $(MAKE) -s install; fi
	bin/eds-fuzz --seeds $(SEEDS) --start $(START)

# A PGXN release: eds-<version>.zip of the committed tree.
dist:
	git archive --format zip --prefix=$(EXTENSION)-$(EXTVERSION).0/ -o $(EXTENSION)-$(EXTVERSION).0.zip HEAD
	@echo "wrote $(EXTENSION)-$(EXTVERSION).0.zip"
