#!/usr/bin/python3
"""Differential property test of the eds ETL: the oracle is a fresh full load.

Each seed plays a random history on a fresh source database: several
sessions writing customers, loans and payments, transactions left open across
ETL runs, prepared transactions, TRUNCATE, keys deleted and re-inserted or
changed, values at the edges of the warehouse's rules.  Between the writes,
eds_run_etl() loads the history incrementally into one warehouse database,
from the primary or from its streaming replica.  At the end a second
warehouse database takes one first (full) load of the same source: the
incremental warehouse must hold the same data, keep its own invariants (SCD2
versions, surrogate keys) and reconcile with the source.

Start it through bin/eds-fuzz, which runs it as the postgres OS user when
called as root.  The servers live in a temporary directory and are stopped at
the end; --keep leaves those of the first failing seed running.
"""

import argparse
import atexit
import collections
import contextlib
import datetime
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from decimal import Decimal

import psycopg2
import psycopg2.extensions

# Every value but numbers comes back as the server prints it, so rows from
# the source and from both warehouses compare exactly, as text (infinity,
# timestamps in UTC).  Numbers stay Decimal and compare by value: an
# unconstrained numeric keeps the scale of the way it was computed (0 or 0.00).
_TEXT_OIDS = (16, 20, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1186, 3802, 5069)
psycopg2.extensions.register_type(
    psycopg2.extensions.new_type(_TEXT_OIDS, 'EDS_FUZZ_TEXT', lambda value, cursor: value))

# Kinds of steps that can be left out, to isolate a failing one.
CATEGORIES = {
    'truncate': 'TRUNCATE of payments, or of loans or customers with CASCADE',
    'edges': 'payment dates at and beyond 2018-2050 and infinity, extreme amounts, a loan paid beyond 10^14, '
             'odd text, product renames, a payment at a customer version boundary',
    'prepared': 'prepared transactions',
    'replica': 'runs from the streaming replica, its replay paused',
    'concurrent': 'runs during which the history goes on',
}
ROW_LIMIT = 20          # differences shown per table
LOCK_TIMEOUT = '500ms'  # a source statement that would wait longer fails (and is logged)


# ---------------------------------------------------------------------------
# SQL text: the history logs exactly what it executes
# ---------------------------------------------------------------------------

def lit(value):
    """A SQL literal of value, on one line (E'' escapes for control characters)."""
    if value is None:
        return 'NULL'
    if isinstance(value, (int, Decimal)):
        return str(value)
    text = str(value)
    if re.search(r'[\\\x00-\x1f]', text):
        escaped = (text.replace('\\', '\\\\').replace("'", "''")
                   .replace('\n', '\\n').replace('\t', '\\t').replace('\r', '\\r'))
        return "E'" + escaped + "'"
    return "'" + text.replace("'", "''") + "'"


def hide_password(conninfo):
    return re.sub(r'password=\S+', 'password=***', conninfo)


# ---------------------------------------------------------------------------
# Servers: source primary, its streaming replica, the warehouse
# ---------------------------------------------------------------------------

COMMON_CONF = """
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'eds'
max_worker_processes = 16
max_connections = 60
timezone = 'UTC'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_writer_delay = 10ms
max_prepared_transactions = 10
wal_level = replica
max_wal_senders = 4
password_encryption = 'scram-sha-256'
autovacuum = off
max_wal_size = 256MB
checkpoint_timeout = 30min
log_line_prefix = '%m [%p] %q%d %a: '
# The replica's settings, harmless on the others: replay waits for the
# ETL's queries instead of cancelling them, and vacuum on the primary keeps
# what they see.
hot_standby_feedback = on
max_standby_streaming_delay = -1
# A hung source must show as a failed run, not stall the test for 10 min.
eds.source_timeout = 60
"""

HBA = """
local   all          all                      trust
host    all          etl    127.0.0.1/32      scram-sha-256
host    all          all    127.0.0.1/32      trust
local   replication  all                      trust
host    replication  all    127.0.0.1/32      trust
"""


class Servers:
    """The three servers, in a temporary directory, on ports port_base..+2."""

    NODES = ('primary', 'replica', 'warehouse')

    def __init__(self, port_base):
        pg_config = os.environ.get('PG_CONFIG', 'pg_config')
        self.bindir = subprocess.run([pg_config, '--bindir'], check=True, capture_output=True,
                                     text=True).stdout.strip()
        self.root = tempfile.mkdtemp(prefix='eds-fuzz.', dir=self._scratch_dir())
        self.ports = dict(zip(self.NODES, range(port_base, port_base + 3)))
        self.etl_password = secrets.token_hex(16)
        self.started = []
        self.keep = False           # leave the servers running (--keep)
        self.keep_files = False     # stop them but leave their directory (a server died)
        self._admin = {}
        self.eds_version = None
        self.declares_primary = False   # eds >= 1.1: a replica's readers declare its primary

    @staticmethod
    def _scratch_dir():
        """EDS_FUZZ_TMPDIR, else /dev/shm when it has room (creating a
        database from a template there takes 20 ms instead of 300 ms on this
        machine's disk), else the usual temporary directory."""
        if os.environ.get('EDS_FUZZ_TMPDIR'):
            return os.environ['EDS_FUZZ_TMPDIR']
        try:
            st = os.statvfs('/dev/shm')
            if st.f_bavail * st.f_frsize > 2 << 30 and os.access('/dev/shm', os.W_OK):
                return '/dev/shm'
        except OSError:
            pass
        return None

    def datadir(self, node):
        return os.path.join(self.root, node)

    def _tool(self, name, *args):
        proc = subprocess.run([os.path.join(self.bindir, name), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f'{name} {" ".join(args)} failed:\n{proc.stdout}{proc.stderr}')

    def _pg_ctl_start(self, node):
        log = os.path.join(self.root, node + '.log')
        try:
            self._tool('pg_ctl', '-D', self.datadir(node), '-l', log, '-w', '-t', '60', 'start')
        except RuntimeError as e:
            with open(log) as f:
                raise RuntimeError(f'{e}\n{node}.log ends with:\n' + ''.join(f.readlines()[-15:])) from None
        self.started.append(node)

    def _append_conf(self, node, text):
        with open(os.path.join(self.datadir(node), 'postgresql.conf'), 'a') as f:
            f.write(text)

    def start(self):
        for node in ('primary', 'warehouse'):
            self._tool('initdb', '-D', self.datadir(node), '-U', 'postgres', '-A', 'trust', '-E', 'UTF8',
                       '--locale=C', '--no-sync')
            self._append_conf(node, COMMON_CONF + f"port = {self.ports[node]}\n"
                                                  f"unix_socket_directories = '{self.root}'\n")
            with open(os.path.join(self.datadir(node), 'pg_hba.conf'), 'w') as f:
                f.write(HBA)
            self._pg_ctl_start(node)
        self._make_templates()
        self._make_replica()

    def _make_templates(self):
        """src_tmpl: eds with a small demo data set; wh_tmpl: eds, empty."""
        self.admin('primary').cursor().execute('CREATE DATABASE src_tmpl')
        with contextlib.closing(self.connect('primary', 'src_tmpl')) as conn:
            cur = conn.cursor()
            cur.execute('CREATE EXTENSION eds')
            cur.execute('SELECT eds_generate_demo_data(20, 40, 150, 3)')
            cur.execute("CREATE ROLE etl LOGIN PASSWORD %s IN ROLE etl_reader", (self.etl_password,))
            cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'eds'")
            self.eds_version = cur.fetchone()[0]
        self.admin('warehouse').cursor().execute('CREATE DATABASE wh_tmpl')
        with contextlib.closing(self.connect('warehouse', 'wh_tmpl')) as conn:
            cur = conn.cursor()
            cur.execute('CREATE EXTENSION eds')
            cur.execute("SELECT to_regprocedure('eds_set_source_primary(text)') IS NOT NULL")
            self.declares_primary = cur.fetchone()[0] == 't'

    def _make_replica(self):
        cur = self.admin('primary').cursor()
        cur.execute("SELECT pg_create_physical_replication_slot('fuzz_replica')")
        cur.execute('CREATE TABLE fuzz_marker (n serial PRIMARY KEY)')
        self._tool('pg_basebackup', '-D', self.datadir('replica'), '-h', self.root,
                   '-p', str(self.ports['primary']), '-U', 'postgres', '-X', 'stream',
                   '-S', 'fuzz_replica', '-R', '-c', 'fast', '--no-sync')
        self._append_conf('replica', f"port = {self.ports['replica']}\n")
        self._pg_ctl_start('replica')
        self.wait_replayed()

    def connect(self, node, dbname, name='eds-fuzz', options=''):
        # Autocommit: the sessions' transactions are the BEGIN and COMMIT the
        # history executes and logs.
        conn = psycopg2.connect(host=self.root, port=self.ports[node], dbname=dbname, user='postgres',
                                application_name=name, options=options)
        conn.autocommit = True
        return conn

    def admin(self, node):
        """A connection to the node's postgres database (CREATE/DROP DATABASE,
        replay markers), committing synchronously."""
        if node not in self._admin or self._admin[node].closed:
            self._admin[node] = self.connect(node, 'postgres', name='eds-fuzz admin',
                                             options='-c synchronous_commit=on')
        return self._admin[node]

    def etl_conninfo(self, node, dbname):
        return (f"host=127.0.0.1 port={self.ports[node]} dbname={dbname} "
                f"user=etl password={self.etl_password}")

    def wait_replayed(self, timeout=60.0):
        """Polls until the replica has replayed everything the primary has
        committed so far.  It waits for a marker row, committed (and so
        flushed and sent) after everything else, to show on the replica:
        with synchronous_commit off, the primary's last WAL position may not
        be flushed, or replayable, for seconds."""
        cur = self.admin('primary').cursor()
        cur.execute('INSERT INTO fuzz_marker DEFAULT VALUES RETURNING n')
        marker = cur.fetchone()[0]
        rcur = self.admin('replica').cursor()
        deadline = time.monotonic() + timeout
        while True:
            rcur.execute('SELECT EXISTS (SELECT FROM fuzz_marker WHERE n = %s)', (marker,))
            if rcur.fetchone()[0] == 't':
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f'the replica did not replay the primary\'s marker {marker} in {timeout:.0f} s')
            time.sleep(0.002)

    def alive(self):
        for node in self.started:
            proc = subprocess.run([os.path.join(self.bindir, 'pg_ctl'), '-D', self.datadir(node), 'status'],
                                  capture_output=True)
            if proc.returncode != 0:
                return False
        return True

    def stop(self):
        if self.keep:
            return
        for conn in self._admin.values():
            conn.close()
        self._admin.clear()
        for node in reversed(self.started):
            subprocess.run([os.path.join(self.bindir, 'pg_ctl'), '-D', self.datadir(node), '-m', 'immediate',
                            '-w', 'stop'], capture_output=True)
        self.started = []
        if not self.keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    def how_to_connect(self, dbs):
        lines = [f'servers kept in {self.root} (logs: {self.root}/*.log); as the postgres OS user:']
        for node, db in (('primary', dbs.src), ('replica', dbs.src), ('warehouse', dbs.wh),
                         ('warehouse', dbs.oracle)):
            lines.append(f'  {node:9} psql -h {self.root} -p {self.ports[node]} -U postgres -d {db}')
        stops = '; '.join(f'{self.bindir}/pg_ctl -D {self.datadir(n)} stop' for n in reversed(self.started))
        lines.append(f'  stop them: {stops}; rm -rf {self.root}')
        return '\n'.join(lines)


class SeedDatabases:
    """One seed's databases: src_N on the primary (and so the replica), wh_N and oracle_N."""

    def __init__(self, servers, seed):
        self.servers = servers
        self.src, self.wh, self.oracle = f'src_{seed}', f'wh_{seed}', f'oracle_{seed}'

    def create(self):
        # FILE_COPY: a copy of the files between two (cheap) checkpoints;
        # WAL_LOG would write the whole template to the WAL, for the
        # replica to replay too.
        cur = self.servers.admin('primary').cursor()
        cur.execute(f'CREATE DATABASE {self.src} TEMPLATE src_tmpl STRATEGY FILE_COPY')
        cur = self.servers.admin('warehouse').cursor()
        for db in (self.wh, self.oracle):
            cur.execute(f'CREATE DATABASE {db} TEMPLATE wh_tmpl STRATEGY FILE_COPY')

    def drop(self):
        # FORCE: an ETL worker may still be doing its housekeeping there.
        for node, db in (('primary', self.src), ('warehouse', self.wh), ('warehouse', self.oracle)):
            self.servers.admin(node).cursor().execute(f'DROP DATABASE IF EXISTS {db} WITH (FORCE)')


class BackgroundRun(threading.Thread):
    """One eds_run_etl() on a warehouse connection, in this thread (run())
    or in the background (start(), join()); then ok and text."""

    def __init__(self, name, conn):
        super().__init__(daemon=True)
        self.name, self.conn = name, conn
        self.ok, self.text = False, 'did not finish'

    def run(self):
        try:
            self.ok, self.text = run_etl(self.conn)
        except psycopg2.Error as e:     # the warehouse connection is gone
            self.text = f'driver error: {type(e).__name__}: {str(e).strip()}'


def run_etl(conn):
    """One eds_run_etl() on a warehouse connection: (succeeded, what to log)."""
    cur = conn.cursor()
    cur.execute('SELECT coalesce(max(run_id), 0) FROM audit.etl_runs')
    before = cur.fetchone()[0]
    try:
        cur.execute('SELECT run_id, status, mode, rows_read, rows_rejected, from_txid, to_txid FROM eds_run_etl()')
        run_id, status, mode, read, rejected, lo, hi = cur.fetchone()
    except psycopg2.Error as e:
        if e.pgcode is None:    # no answer from the warehouse
            raise
        cur.execute("SELECT run_id, error_message, error_detail FROM audit.etl_runs "
                    "WHERE status = 'failed' AND run_id > %s ORDER BY run_id DESC LIMIT 1", (before,))
        row = cur.fetchone()
        if row is None:
            return False, f'ERROR {e.pgcode}: {str(e).strip()}'
        return False, f'failed (run {row[0]}): {row[1]}' + (f' DETAIL: {row[2]}' if row[2] else '')
    cur.execute('SELECT note FROM audit.etl_runs WHERE run_id = %s', (run_id,))
    note = cur.fetchone()[0]
    text = f'{status} {mode} (run {run_id}, window [{lo}, {hi}), read {read}, rejected {rejected})'
    return status == 'success', text + (f' note: {note}' if note else '')


# ---------------------------------------------------------------------------
# The generator's picture of the source
# ---------------------------------------------------------------------------

ALL = object()   # an effect on every key of a table (TRUNCATE)


class Model:
    """What the generator believes is committed on the source: enough to pick
    keys that exist, not a second database (a pick that is wrong only makes a
    statement touch nothing or fail, which the history logs)."""

    TABLES = ('customers', 'loans', 'payments', 'products', 'deleted')

    def __init__(self, tables):
        self.customers = tables['customers']   # id -> email
        self.loans = tables['loans']           # id -> customer id
        self.payments = tables['payments']     # id -> loan id
        self.products = tables['products']     # id -> name
        self.deleted = tables['deleted']       # (table, id) -> a deleted row, to insert it again

    @classmethod
    def load(cls, conn):
        cur = conn.cursor()
        tables = {'deleted': {}}
        for table, sql in (('customers', 'SELECT customer_id, email FROM operational.customers'),
                           ('loans', 'SELECT loan_id, customer_id FROM operational.loans'),
                           ('payments', 'SELECT payment_id, loan_id FROM operational.payments'),
                           ('products', 'SELECT product_id, product_name FROM operational.loan_products')):
            cur.execute(sql)
            tables[table] = {int(k): (int(v) if table in ('loans', 'payments') else v) for k, v in cur}
        return cls(tables)

    def copy(self):
        return Model({t: dict(getattr(self, t)) for t in self.TABLES})

    def apply(self, effects):
        for table, key, value in effects:
            rows = getattr(self, table)
            if key is ALL:
                rows.clear()
            elif value is None:
                rows.pop(key, None)
            else:
                rows[key] = value


# Row locks the generator takes into account, so that no statement waits for
# another session's open transaction (one thread drives them all): a foreign key
# check (KEY SHARE), an update of non-key columns (NO KEY UPDATE), and a
# delete, key change or insert with an explicit key (exclusive).
SHARE, UPDATE, EXCLUSIVE = 1, 2, 3
COMPATIBLE = {(SHARE, SHARE), (SHARE, UPDATE), (UPDATE, SHARE)}


class Txn:
    """An open or prepared source transaction, as far as the generator tracks it."""

    def __init__(self):
        self.locks = {}         # (table, key) -> strongest mode
        self.tables = set()     # tables it holds a lock on (a TRUNCATE of them would wait)
        self.effects = []       # applied to the model when it commits
        self.gid = None

    def lock(self, key, mode):
        self.locks[key] = max(mode, self.locks.get(key, 0))
        self.tables.add(key[0])


class Session:
    def __init__(self, number, conn):
        self.number = number
        self.conn = conn
        self.cur = conn.cursor()
        self.txn = None


class StatementFailed(Exception):
    pass


# ---------------------------------------------------------------------------
# The history: random writes in several sessions, interleaved with ETL runs
# ---------------------------------------------------------------------------

FIRST_NAMES = ['Wanjiru', 'Kamau', 'Otieno', 'Achieng', 'Njeri', 'Kiprop', 'Amina', 'Baraka']
LAST_NAMES = ['Mwangi', 'Ochieng', 'Kariuki', 'Wekesa', 'Koech', 'Abdi', 'Ndungu']
CITIES = ['Nairobi', 'Mombasa', 'Kisumu', 'Nakuru', 'Eldoret', 'Thika', None]
SEGMENTS = ['retail', 'sme', 'corporate']
STATUSES = ['pending', 'active', 'repaid', 'defaulted']
METHODS = ['mpesa', 'bank_transfer', 'cash', 'cheque', 'online']
BRANCHES = ['NBO-01', 'NBO-02', 'MSA-01', 'KSM-03', 'NKR-02', None]
# Text the ETL's COPY must carry unchanged: quotes, COPY's escapes and its
# NULL marker, line breaks, non-ASCII, blanks; '' is not NULL.
ODD_TEXT = ["O'Brien", 'Tab\there', 'back\\slash', '\\N', 'two\nlines', 'Zoë Ñúñez 山田',
            ' padded ', 'comma, "quoted"', '']
# Payment dates at the edges of the warehouse's calendar (2018-2050, UTC).
EDGE_DATES = ['2017-06-01 00:00:00+00', '2051-02-01 00:00:00+00', 'infinity', '-infinity',
              '2018-01-01 00:00:00+00', '2017-12-31 23:59:59.999999+00',
              '2050-12-31 23:59:59.999999+00', '2051-01-01 00:00:00+00']
MAX_AMOUNT = Decimal('999999999999.99')     # numeric(14,2)
DATE_FROM = datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)
DATE_SPAN = 6 * 365 * 86400                 # 2023-2028: before and after "now"


class History:
    """One seed's history.  Generates each step from the seed and the outcome
    of the previous ones, executes it and logs the exact SQL."""

    def __init__(self, seed, opts, servers, dbs, model):
        self.seed = seed
        self.opts = opts
        self.servers = servers
        self.dbs = dbs
        self.model = model
        self.rng = random.Random(seed)
        self.pause_rng = random.Random(-seed)
        self.log = []
        self.step = 0
        self.failures = []          # ETL runs that did not succeed
        self.etl_runs = 0
        self.prepared = []
        self.unique = itertools.count(1)
        self.replica_paused = False
        self.replica_ready = False  # the replica has replayed the creation of the source db
        self.running = None         # a run in the background, for steps_left more steps
        self.steps_left = 0
        self.primary_declared = False
        self.wh_source = None
        self.sessions = []
        self.wh = servers.connect('warehouse', dbs.wh, name='eds-fuzz wh')
        for n in range(1, self.rng.randint(3, 4) + 1):
            conn = servers.connect('primary', dbs.src, name=f'eds-fuzz s{n}')
            conn.cursor().execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            self.sessions.append(Session(n, conn))
        self.ops = [(weight, getattr(self, 'op_' + name)) for weight, category, name in self.OPS
                    if category is None or category in opts.categories]

    # ----------------------------------------------------------------- log

    def note(self, who, text):
        self.step += 1
        self.log.append(f'step {self.step}: {who}: {text}')

    def execute(self, session, sql):
        """Runs one statement in a session; StatementFailed (logged) on an error."""
        try:
            session.cur.execute(sql)
            rows = session.cur.fetchall() if session.cur.description else []
        except psycopg2.Error as e:
            if e.pgcode is None:    # no answer from the server: the seed fails
                raise
            self.note(f'session {session.number}', f'{sql} -> ERROR {e.pgcode}: {e.diag.message_primary}')
            raise StatementFailed() from e
        shown = ''
        if rows:
            shown = ' -> ' + ', '.join('(' + ', '.join(str(v) for v in r) + ')' for r in rows[:3])
            shown += f' ... ({len(rows)} rows)' if len(rows) > 3 else ''
        self.note(f'session {session.number}', sql + shown)
        return rows

    # --------------------------------------------------------- transactions

    def others(self, txn):
        return [t for t in [s.txn for s in self.sessions] + self.prepared if t is not None and t is not txn]

    def free(self, key, mode, txn):
        return all(key not in t.locks or (t.locks[key], mode) in COMPATIBLE for t in self.others(txn))

    def pick(self, table, mode, txn, where=lambda key: True):
        """A random key of the model's table that this transaction can lock without waiting, or None."""
        keys = [k for k in sorted(getattr(self.model, table))
                if where(k) and self.free((table, k), mode, txn)]
        return self.rng.choice(keys) if keys else None

    def write(self, session, sql, locks=(), effects=lambda rows: (), tables=(), returned=lambda rows: ()):
        """One write in the session's transaction (begun if none is open).
        locks are the rows it locks, tables the tables it reads besides
        theirs (a foreign key check); effects(rows) gives the model changes
        it makes on commit, returned(rows) the keys it created, which it
        then holds."""
        if session.txn is None:
            self.execute(session, 'BEGIN')
            session.txn = Txn()
        txn = session.txn
        try:
            rows = self.execute(session, sql)
        except StatementFailed:
            self.rollback(session)
            return False
        for key, mode in locks:
            txn.lock(key, mode)
        for key in returned(rows):
            txn.lock(key, EXCLUSIVE)
        txn.tables.update(tables)
        txn.effects.extend(effects(rows))
        return True

    def commit(self, session):
        txn, session.txn = session.txn, None
        try:
            self.execute(session, 'COMMIT')
        except StatementFailed:     # the transaction is gone, rolled back
            return
        self.model.apply(txn.effects)

    def rollback(self, session):
        self.execute(session, 'ROLLBACK')
        session.txn = None

    def prepare(self, session):
        txn = session.txn
        txn.gid = f'g_{self.seed}_{next(self.unique)}'
        session.txn = None
        try:
            self.execute(session, f"PREPARE TRANSACTION '{txn.gid}'")
        except StatementFailed:
            return
        self.prepared.append(txn)

    def finish_prepared(self, session, txn, commit):
        self.prepared.remove(txn)
        self.execute(session, f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED '{txn.gid}'")
        if commit:
            self.model.apply(txn.effects)

    def end_transaction(self, session):
        r = self.rng.random()
        if 'prepared' in self.opts.categories and r < 0.12 and len(self.prepared) < 2:
            self.prepare(session)
        elif r < 0.3:
            self.rollback(session)
        else:
            self.commit(session)

    def end_everything(self):
        """Ends every open and prepared transaction, each committed or rolled back at random."""
        for session in self.sessions:
            if session.txn is not None:
                (self.commit if self.rng.random() < 0.7 else self.rollback)(session)
        for txn in list(self.prepared):
            self.finish_prepared(self.sessions[0], txn, self.rng.random() < 0.6)

    # ------------------------------------------------------------ ETL runs

    def set_source(self, conn, node, who, function='eds_set_source'):
        conninfo = self.servers.etl_conninfo(node, self.dbs.src)
        conn.cursor().execute(f'SELECT {function}(%s)', (conninfo,))
        self.note(who, f"SELECT {function}('{hide_password(conninfo)}')")

    def etl(self, node, label, steps_during=0):
        """One run on the incremental warehouse; with steps_during, in the
        background while that many more steps of the history execute."""
        self.wait_for_run()
        if node == 'replica' and not self.replica_ready:
            self.servers.wait_replayed()
            self.replica_ready = True
        if node == 'replica' and self.servers.declares_primary and not self.primary_declared:
            self.set_source(self.wh, 'primary', f'warehouse {self.dbs.wh}', 'eds_set_source_primary')
            self.primary_declared = True
        if self.wh_source != node:
            self.set_source(self.wh, node, f'warehouse {self.dbs.wh}')
            self.wh_source = node
        self.etl_runs += 1
        run = BackgroundRun(f'{label} {self.etl_runs} from the {node}', self.wh)
        if steps_during:
            self.note(f'warehouse {self.dbs.wh}', f'{run.name}: started; the next {steps_during} steps run during it')
            run.start()
            self.running, self.steps_left = run, steps_during
        else:
            run.run()
            self.finished(run)

    def finished(self, run, overlap=''):
        self.note(f'warehouse {self.dbs.wh}', f'{run.name}: {run.text}{overlap}')
        if not run.ok:
            self.failures.append(f'ETL {run.name}: {run.text}')

    def wait_for_run(self):
        if self.running is not None:
            run, self.running = self.running, None
            overlap = ' (it outlasted the steps)' if run.is_alive() else ' (it ended during the steps)'
            run.join()
            self.finished(run, overlap)

    # ---------------------------------------------------------------- play

    def play(self):
        rng = self.rng
        if self.opts.continuous:
            self.start_continuous()
        n_ops = rng.randint(min(10, self.opts.max_ops), self.opts.max_ops)
        runs = collections.Counter(rng.choices(range(n_ops + 1), k=rng.randint(2, 6)))
        for position in range(n_ops + 1):
            for _ in range(runs[position]):
                if self.opts.simple:
                    self.end_everything()
                replica = 'replica' in self.opts.categories and rng.random() < 0.3
                concurrent = 'concurrent' in self.opts.categories and not self.opts.simple and rng.random() < 0.3
                if self.opts.continuous and self.pause_rng.random() < 0.7:
                    # Most runs left to the windows: a pause instead.
                    time.sleep(self.pause_rng.uniform(0.05, 0.25))
                    continue
                self.etl('replica' if replica else 'primary', 'run', rng.randint(1, 3) if concurrent else 0)
            if position < n_ops:
                if self.opts.continuous:
                    # Room for windows between the steps (its own random, so the
                    # history is the one the seed plays without --continuous).
                    time.sleep(self.pause_rng.uniform(0, 0.03))
                if self.running is not None:
                    # Spread over the run (connect, snapshot, extract, load),
                    # not all before its worker has even started.
                    time.sleep(rng.uniform(0, 0.04))
                self.one_step()
                if self.running is not None:
                    self.steps_left -= 1
                    if self.steps_left == 0:
                        self.wait_for_run()
        # The end: nothing open, the replica replaying, two runs from the
        # primary (the second takes what the first one's window left out).
        self.wait_for_run()
        self.end_everything()
        if self.replica_paused:
            self.op_toggle_replay()
        for _ in range(2):
            self.etl('primary', 'final run')
        if self.opts.continuous:
            self.stop_continuous()

    def start_continuous(self):
        """Continuous mode from the start: its windows interleave with every step."""
        self.set_source(self.wh, 'primary', f'warehouse {self.dbs.wh}')
        self.wh_source = 'primary'
        cur = self.wh.cursor()
        cur.execute("SELECT eds_start_continuous('100 milliseconds')")
        self.note(f'warehouse {self.dbs.wh}', f'continuous: {cur.fetchone()[0]}')

    def stop_continuous(self):
        """Off, its worker gone; a failed window is a failure like a failed run."""
        cur = self.wh.cursor()
        cur.execute('SELECT eds_stop_continuous()')
        deadline = time.monotonic() + 60
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eds continuous' "
                        "AND datname = current_database()")
            if cur.fetchone()[0] == '0':
                break
            if time.monotonic() > deadline:
                self.failures.append('the continuous worker did not stop within 60 s')
                break
            time.sleep(0.05)
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status = 'failed'), "
                    "string_agg(DISTINCT error_message, '; ') FILTER (WHERE status = 'failed') "
                    "FROM audit.etl_runs WHERE origin = 'continuous'")
        windows, failed, errors = cur.fetchone()
        self.note(f'warehouse {self.dbs.wh}', f'continuous: stopped; {windows} window(s) recorded, {failed} failed')
        if failed != '0':
            self.failures.append(f'continuous windows failed: {errors}')

    def one_step(self):
        session = self.rng.choice(self.sessions)
        if session.txn is not None and self.rng.random() < 0.35:
            self.end_transaction(session)
            return
        weights, ops = zip(*self.ops)
        for _ in range(20):
            if self.rng.choices(ops, weights)[0](session):
                return

    def close(self):
        """Leaves nothing behind that would keep the databases from being
        dropped or the next seed's replica from replaying (after a failure
        in the middle of the history too)."""
        if self.running is not None:
            self.running.join()
        if self.replica_paused:
            self.servers.admin('replica').cursor().execute('SELECT pg_wal_replay_resume()')
        if self.prepared:
            with contextlib.closing(self.servers.connect('primary', self.dbs.src, name='eds-fuzz cleanup')) as conn:
                for txn in self.prepared:
                    conn.cursor().execute(f"ROLLBACK PREPARED '{txn.gid}'")
        for conn in [s.conn for s in self.sessions] + [self.wh]:
            conn.close()

    # ------------------------------------------------------------------ values

    def money(self, lo, hi):
        return Decimal(self.rng.randint(lo * 100, hi * 100)).scaleb(-2)

    def date(self):
        moment = DATE_FROM + datetime.timedelta(seconds=self.rng.randrange(DATE_SPAN))
        return moment.strftime('%Y-%m-%d %H:%M:%S+00')

    def name(self, odd=False):
        if odd:
            return self.rng.choice([t for t in ODD_TEXT if t]) + ' ' + self.rng.choice(LAST_NAMES)
        return f'{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}'

    def city(self, odd=False):
        return self.rng.choice(ODD_TEXT) if odd else self.rng.choice(CITIES)

    def portions(self):
        principal, interest = self.money(50, 80000), self.money(0, 4000)
        penalty = self.money(0, 300) if self.rng.random() < 0.2 else Decimal('0.00')
        return principal + interest + penalty, principal, interest, penalty

    # Columns a deleted row is read back with, to insert it again by its key.
    REINSERT_COLUMNS = {
        'payments': ('payment_id', 'loan_id, amount, principal_portion, interest_portion, penalty_portion, '
                                   'payment_method, payment_date'),
        'loans': ('loan_id', 'customer_id, product_id, amount, interest_rate, tenure_months, status, '
                             'outstanding_balance, disbursed_at, maturity_date, loan_officer, branch_code'),
        'customers': ('customer_id', 'full_name, email, phone, city, country, segment'),
    }

    def insert_row(self, s, table, columns, values, locks, model_value, key=None):
        """INSERT ... RETURNING the key: the new row (with the given key, or
        the sequence's) in the model on commit, no longer a deleted one."""
        id_column = self.REINSERT_COLUMNS[table][0]
        if key is not None:
            columns, values = f'{id_column}, {columns}', [key] + list(values)
        sql = (f'INSERT INTO operational.{table} ({columns}) VALUES ({", ".join(lit(v) for v in values)}) '
               f'RETURNING {id_column}')
        self.write(s, sql, locks, returned=lambda rows: [(table, int(r[0])) for r in rows],
                   effects=lambda rows: [e for r in rows for e in ((table, int(r[0]), model_value),
                                                                   ('deleted', (table, int(r[0])), None))])
        return True

    def delete_row(self, s, table, key, tables=(), keep=False):
        """DELETE by key; keep: remember the row, to insert it again later (in another transaction)."""
        id_column, columns = self.REINSERT_COLUMNS[table]
        sql = f'DELETE FROM operational.{table} WHERE {id_column} = {key}' + (f' RETURNING {columns}' if keep else '')
        self.write(s, sql, [((table, key), EXCLUSIVE)], tables=tables,
                   effects=lambda rows: [(table, key, None)] + [('deleted', (table, key), tuple(r)) for r in rows])
        return True

    def pick_deleted(self, table, txn, parent):
        """A deleted row of the table to insert again: its key free, and its
        parent (table, column index) free to share-lock."""
        parent_table, index = parent
        rows = [(key, row) for (t, key), row in sorted(self.model.deleted.items())
                if t == table and self.free((table, key), EXCLUSIVE, txn)
                and self.free((parent_table, int(row[index])), SHARE, txn)]
        return self.rng.choice(rows) if rows else (None, None)

    def payment_insert(self, s, loan, amount, principal, interest, penalty, method, date, key=None):
        return self.insert_row(s, 'payments', self.REINSERT_COLUMNS['payments'][1],
                               [loan, amount, principal, interest, penalty, method, date],
                               [(('loans', loan), SHARE)], loan, key)

    # ------------------------------------------------------------- operations
    # Each returns whether it found something to do.

    OPS = [
        (10, None, 'insert_payment'),
        (6, None, 'update_payment'),
        (1, None, 'update_payments_of_a_loan'),
        (2, None, 'delete_payment'),
        (3, None, 'delete_payment_to_reinsert'),
        (8, None, 'reinsert_payment'),
        (2, None, 'reinsert_around_open_transaction'),
        (2, None, 'change_payment_key'),
        (2, None, 'insert_customer'),
        (5, None, 'update_customer'),
        (2, None, 'delete_customer'),
        (3, None, 'reinsert_customer'),
        (2, None, 'insert_loan'),
        (5, None, 'update_loan'),
        (1, None, 'update_loans_of_a_customer'),
        (2, None, 'delete_loan'),
        (3, None, 'reinsert_loan'),
        (3, 'edges', 'edge_payment'),
        (1, 'edges', 'payment_at_a_version_boundary'),
        (1, 'edges', 'huge_loan_total'),
        (2, 'edges', 'rename_product'),
        (2, 'edges', 'odd_customer_text'),
        (3, 'truncate', 'truncate'),
        (2, 'prepared', 'finish_a_prepared'),
        (2, 'replica', 'toggle_replay'),
    ]

    def op_insert_payment(self, s):
        loan = self.pick('loans', SHARE, s.txn)
        if loan is None:
            return False
        return self.payment_insert(s, loan, *self.portions(), self.rng.choice(METHODS), self.date())

    def op_update_payment(self, s):
        rng = self.rng
        payment = self.pick('payments', UPDATE, s.txn)
        if payment is None:
            return False
        locks, effects = [(('payments', payment), UPDATE)], []
        kind = rng.choice(['amount', 'date', 'method', 'portions', 'loan'])
        if kind == 'amount':
            delta = self.money(1, 5000) * rng.choice([1, 1, -1])
            sets = f'amount = amount + {delta}, principal_portion = principal_portion + {delta}'
        elif kind == 'date':
            sets = f'payment_date = {lit(self.date())}'
        elif kind == 'method':
            sets = f'payment_method = {lit(rng.choice(METHODS))}'
        elif kind == 'portions':
            sets = 'principal_portion = principal_portion + interest_portion, interest_portion = 0'
        else:
            loan = self.pick('loans', SHARE, s.txn)
            if loan is None:
                return False
            sets = f'loan_id = {loan}'
            locks.append((('loans', loan), SHARE))
            effects.append(('payments', payment, loan))
        self.write(s, f'UPDATE operational.payments SET {sets} WHERE payment_id = {payment}', locks,
                   lambda rows: effects)
        return True

    def update_children(self, s, table, parent_column, parent_table, child_table, sets):
        """One UPDATE of every row of child_table whose parent is one picked
        parent, when no other transaction holds any of them."""
        children = collections.defaultdict(list)
        for child, parent in getattr(self.model, child_table).items():
            children[parent].append(child)
        parent = self.pick(parent_table, SHARE, s.txn, where=lambda p: children.get(p) and all(
            self.free((child_table, c), UPDATE, s.txn) for c in children[p]))
        if parent is None:
            return False
        self.write(s, f'UPDATE operational.{table} SET {sets} WHERE {parent_column} = {parent}',
                   [((child_table, c), UPDATE) for c in children[parent]])
        return True

    def op_update_payments_of_a_loan(self, s):
        return self.update_children(s, 'payments', 'loan_id', 'loans', 'payments',
                                    f'payment_method = {lit(self.rng.choice(METHODS))}, '
                                    "payment_date = payment_date + interval '1 day'")

    def op_update_loans_of_a_customer(self, s):
        return self.update_children(s, 'loans', 'customer_id', 'customers', 'loans',
                                    f'branch_code = {lit(self.rng.choice(BRANCHES))}')

    def op_delete_payment(self, s):
        payment = self.pick('payments', EXCLUSIVE, s.txn)
        return payment is not None and self.delete_row(s, 'payments', payment)

    def op_delete_payment_to_reinsert(self, s, payment=None):
        """The first half of a delete and re-insert of one id, in two transactions."""
        payment = payment or self.pick('payments', EXCLUSIVE, s.txn)
        return payment is not None and self.delete_row(s, 'payments', payment, keep=True)

    def op_reinsert_payment(self, s, payment=None):
        if payment is None:
            payment, row = self.pick_deleted('payments', s.txn, ('loans', 0))
        else:
            row = self.model.deleted[('payments', payment)]
        if payment is None:
            return False
        loan, amount, principal, interest, penalty, method, date = row
        if self.rng.random() < 0.5:     # the same row again, or another version of it
            amount, principal, interest, penalty = self.portions()
            date = self.date()
        return self.payment_insert(s, int(loan), amount, principal, interest, penalty, method, date, payment)

    def op_reinsert_around_open_transaction(self, s):
        """A payment deleted and inserted again in two transactions, while
        a transaction that began between them stays open: the next run's
        window ends before the re-insert, but its snapshot sees it."""
        others = [o for o in self.sessions if o is not s and o.txn is None]
        payment = self.pick('payments', EXCLUSIVE, s.txn)
        if s.txn is not None or not others or payment is None:
            return False
        self.op_delete_payment_to_reinsert(s, payment)
        if s.txn is not None:
            self.commit(s)
        holder = self.rng.choice(others)
        for _ in range(20):     # any write: it gives the transaction its id
            if self.rng.choice([self.op_insert_payment, self.op_update_customer, self.op_update_loan])(holder):
                break
        if ('payments', payment) in self.model.deleted and self.op_reinsert_payment(s, payment) \
                and s.txn is not None:
            self.commit(s)
        return True

    def op_change_payment_key(self, s):
        payment = self.pick('payments', EXCLUSIVE, s.txn)
        if payment is None:
            return False
        new_id = 1000000 + next(self.unique)
        loan = self.model.payments[payment]
        self.write(s, f'UPDATE operational.payments SET payment_id = {new_id} WHERE payment_id = {payment}',
                   [(('payments', payment), EXCLUSIVE), (('payments', new_id), EXCLUSIVE)],
                   lambda rows: [('payments', payment, None), ('payments', new_id, loan)])
        return True

    def insert_customer(self, s, name, email, phone, city):
        return self.insert_row(s, 'customers', 'full_name, email, phone, city, segment',
                               [name, email, phone, city, self.rng.choice(SEGMENTS)], [], email)

    def op_insert_customer(self, s):
        n = next(self.unique)
        return self.insert_customer(s, self.name(), f'fuzz.{n}@example.com', f'+2547{n:08d}', self.city())

    def update_customer(self, s, odd, customer=None):
        rng = self.rng
        n = next(self.unique)
        choices = {'city': lambda: lit(self.city(odd)), 'segment': lambda: lit(rng.choice(SEGMENTS)),
                   'full_name': lambda: lit(self.name(odd)),
                   'email': lambda: lit((rng.choice(ODD_TEXT) if odd else 'fuzz') + f'.{n}@example.com'),
                   'phone': lambda: lit(rng.choice([None, f'+2547{n:08d}'] + (ODD_TEXT if odd else []))),
                   'country': lambda: lit(rng.choice(['Kenya', 'Uganda', 'Tanzania']))}
        columns = rng.sample(sorted(choices), rng.choice([1, 1, 1, 2, 3]))
        # email has a unique index: changing it locks the row as a key update does.
        mode = EXCLUSIVE if 'email' in columns else UPDATE
        if customer is None or not self.free(('customers', customer), mode, s.txn):
            customer = self.pick('customers', mode, s.txn)
        if customer is None:
            return False
        sets = ', '.join(f'{c} = {choices[c]()}' for c in columns)
        self.write(s, f'UPDATE operational.customers SET {sets} WHERE customer_id = {customer}',
                   [(('customers', customer), mode)])
        return True

    def op_update_customer(self, s):
        return self.update_customer(s, odd=False)

    def op_delete_customer(self, s):
        borrowers = set(self.model.loans.values())
        customer = self.pick('customers', EXCLUSIVE, s.txn, where=lambda k: k not in borrowers)
        # The foreign key check reads operational.loans.
        return customer is not None and self.delete_row(s, 'customers', customer, ['loans'],
                                                        keep=self.rng.random() < 0.6)

    def op_reinsert_customer(self, s):
        """A deleted customer's id back, with its row: SCD2 opens a new version."""
        deleted = [(k, row) for (t, k), row in sorted(self.model.deleted.items())
                   if t == 'customers' and self.free(('customers', k), EXCLUSIVE, s.txn)]
        if not deleted:
            return False
        customer, row = self.rng.choice(deleted)
        return self.insert_row(s, 'customers', self.REINSERT_COLUMNS['customers'][1], row, [], row[1], customer)

    def op_insert_loan(self, s):
        rng = self.rng
        customer = self.pick('customers', SHARE, s.txn)
        product = self.pick('products', SHARE, s.txn)
        if customer is None or product is None:
            return False
        amount = self.money(5000, 3000000)
        status = rng.choice(['pending', 'active', 'active'])
        disbursed = None if status == 'pending' else self.date()
        values = [customer, product, amount, self.money(5, 30), rng.randint(3, 60), status, amount, disbursed,
                  disbursed and disbursed[:10], f'LO-{rng.randint(1, 40):03d}', rng.choice(BRANCHES)]
        return self.insert_row(s, 'loans', self.REINSERT_COLUMNS['loans'][1], values,
                               [(('customers', customer), SHARE), (('products', product), SHARE)], customer)

    def op_update_loan(self, s):
        rng = self.rng
        loan = self.pick('loans', UPDATE, s.txn)
        if loan is None:
            return False
        locks, effects = [(('loans', loan), UPDATE)], []
        kind = rng.choice(['status', 'branch', 'balance', 'customer', 'customer', 'terms'])
        if kind == 'status':
            status = rng.choice(STATUSES)
            sets = "status = 'repaid', outstanding_balance = 0" if status == 'repaid' else f'status = {lit(status)}'
        elif kind == 'branch':
            sets = f'branch_code = {lit(rng.choice(BRANCHES))}'
        elif kind == 'balance':
            sets = f'outstanding_balance = round(amount * {rng.choice(["0.1", "0.5", "0.93", "1"])}, 2)'
        elif kind == 'customer':    # the loan, and its payments, move to another borrower
            customer = self.pick('customers', SHARE, s.txn)
            if customer is None:
                return False
            sets = f'customer_id = {customer}'
            locks.append((('customers', customer), SHARE))
            effects.append(('loans', loan, customer))
        else:
            sets = (f'interest_rate = {self.money(5, 30)}, tenure_months = {rng.randint(3, 60)}, '
                    f"loan_officer = 'LO-{rng.randint(1, 40):03d}', amount = amount + 1000, "
                    f"maturity_date = {lit(self.date()[:10])}, disbursed_at = {lit(self.date())}")
        self.write(s, f'UPDATE operational.loans SET {sets} WHERE loan_id = {loan}', locks, lambda rows: effects)
        return True

    def op_delete_loan(self, s):
        paid = set(self.model.payments.values())
        loan = self.pick('loans', EXCLUSIVE, s.txn, where=lambda k: k not in paid)
        # The foreign key check reads operational.payments.
        return loan is not None and self.delete_row(s, 'loans', loan, ['payments'], keep=self.rng.random() < 0.6)

    def op_reinsert_loan(self, s):
        """A deleted loan's id back, with its row (dim_loan's row is no longer deleted)."""
        loan, row = self.pick_deleted('loans', s.txn, ('customers', 0))
        if loan is None:
            return False
        return self.insert_row(s, 'loans', self.REINSERT_COLUMNS['loans'][1], row,
                               [(('customers', int(row[0])), SHARE), (('products', int(row[1])), SHARE)],
                               int(row[0]), loan)

    def op_edge_payment(self, s):
        """A payment dated at or beyond the calendar's ends, or of an extreme amount; new or updated."""
        rng = self.rng
        kind = rng.choice(['date', 'date', 'huge', 'tiny', 'update date'])
        if kind == 'update date':
            payment = self.pick('payments', UPDATE, s.txn)
            if payment is None:
                return False
            self.write(s, f'UPDATE operational.payments SET payment_date = {lit(rng.choice(EDGE_DATES))} '
                          f'WHERE payment_id = {payment}', [(('payments', payment), UPDATE)])
            return True
        loan = self.pick('loans', SHARE, s.txn)
        if loan is None:
            return False
        amount, principal, interest, penalty = self.portions()
        date = self.date()
        if kind == 'date':
            date = rng.choice(EDGE_DATES)
        elif kind == 'huge':
            amount = principal = MAX_AMOUNT
            interest = penalty = Decimal('0.00')
        else:
            amount = penalty = Decimal('0.01')
            principal = interest = Decimal('0.00')
        return self.payment_insert(s, loan, amount, principal, interest, penalty, rng.choice(METHODS), date)

    def op_payment_at_a_version_boundary(self, s):
        """A payment dated now() and a change of its borrower in the same
        transaction: the payment falls exactly where the new version starts."""
        loan = self.pick('loans', SHARE, s.txn, where=lambda k: self.free(
            ('customers', self.model.loans[k]), UPDATE, s.txn))
        if loan is None:
            return False
        columns = self.REINSERT_COLUMNS['payments'][1].replace(', payment_date', '')
        amount, principal, interest, penalty = self.portions()
        if self.insert_row(s, 'payments', columns, [loan, amount, principal, interest, penalty, 'cash'],
                           [(('loans', loan), SHARE)], loan) and s.txn is not None:
            self.update_customer(s, odd=False, customer=self.model.loans[loan])
        return True

    def op_huge_loan_total(self, s):
        """101 payments of the largest amount on one loan: its total passes 10^14."""
        loan = self.pick('loans', SHARE, s.txn)
        if loan is None:
            return False
        sql = ('INSERT INTO operational.payments (loan_id, amount, principal_portion, payment_method, payment_date) '
               f"SELECT {loan}, {MAX_AMOUNT}, {MAX_AMOUNT}, 'bank_transfer', "
               f"{lit(self.date())}::timestamptz + g * interval '1 minute' FROM generate_series(1, 101) g "
               'RETURNING payment_id')
        self.write(s, sql, [(('loans', loan), SHARE)],
                   returned=lambda rows: [('payments', int(r[0])) for r in rows],
                   effects=lambda rows: [('payments', int(r[0]), loan) for r in rows])
        return True

    def op_rename_product(self, s):
        # product_name has a unique index: a rename locks the row as a key update does.
        product = self.pick('products', EXCLUSIVE, s.txn)
        if product is None:
            return False
        name = f'{self.model.products[product].split(" #")[0]} #{next(self.unique)}'
        sets = f'product_name = {lit(name)}'
        if self.rng.random() < 0.3:
            sets += f", product_type = {lit(self.rng.choice(['personal', 'business', 'asset', 'green']))}"
        self.write(s, f'UPDATE operational.loan_products SET {sets} WHERE product_id = {product}',
                   [(('products', product), EXCLUSIVE)], lambda rows: [('products', product, name)])
        return True

    def op_odd_customer_text(self, s):
        if self.rng.random() < 0.4:
            n = next(self.unique)
            return self.insert_customer(s, self.name(odd=True), f'{self.rng.choice(ODD_TEXT)}.{n}@example.com',
                                        self.rng.choice([None] + ODD_TEXT), self.city(odd=True))
        return self.update_customer(s, odd=True)

    # What a TRUNCATE empties: payments alone, or loans or customers with CASCADE.
    TRUNCATES = [(0.85, 'payments', ('payments',)),
                 (0.10, 'loans', ('loans', 'payments')),
                 (0.05, 'customers', ('customers', 'loans', 'payments'))]

    def op_truncate(self, s):
        # In a transaction of its own, once the transactions that hold the
        # tables have ended (it would wait for them), while the replica
        # replays (a pause between the TRUNCATE's lock and its commit would
        # block the ETL's reads there) and no run reads (the run's next
        # table locks would queue behind the TRUNCATE's, which waits for
        # the run: a deadlock).
        if s.txn is not None or self.replica_paused or self.running is not None:
            return False
        rng = self.rng
        _, target, tables = rng.choices(self.TRUNCATES, [w for w, _, _ in self.TRUNCATES])[0]
        for other in self.sessions:
            if other.txn is not None and other.txn.tables & set(tables):
                (self.commit if rng.random() < 0.7 else self.rollback)(other)
        for txn in [t for t in self.prepared if t.tables & set(tables)]:
            self.finish_prepared(s, txn, rng.random() < 0.6)
        restart = ' RESTART IDENTITY' if rng.random() < 0.5 else ''
        self.execute(s, 'BEGIN')
        s.txn = Txn()
        try:
            self.execute(s, f'TRUNCATE operational.{target}{restart}' + (' CASCADE' if len(tables) > 1 else ''))
        except StatementFailed:
            self.rollback(s)
            return True
        s.txn.effects += [(table, ALL, None) for table in tables]
        (self.commit if rng.random() < 0.9 else self.rollback)(s)
        return True

    def op_finish_a_prepared(self, s):
        if s.txn is not None or not self.prepared:
            return False
        self.finish_prepared(s, self.rng.choice(self.prepared), self.rng.random() < 0.6)
        return True

    def op_toggle_replay(self, s=None):
        """Pauses the replica's replay (it then lags behind), or resumes it."""
        cur = self.servers.admin('replica').cursor()
        if self.replica_paused:
            cur.execute('SELECT pg_wal_replay_resume()')
            self.note('replica', 'SELECT pg_wal_replay_resume()')
        else:
            # Caught up first, so that no TRUNCATE is half replayed (see above).
            self.servers.wait_replayed()
            self.replica_ready = True
            cur.execute('SELECT pg_wal_replay_pause()')
            self.note('replica', 'SELECT pg_wal_replay_pause()')
        self.replica_paused = not self.replica_paused
        return True


# ---------------------------------------------------------------------------
# The oracle: what the incremental warehouse must agree on
# ---------------------------------------------------------------------------

# (table, number of key columns, query); rows compared as text, by key.
WAREHOUSE_TABLES = [
    ('fact_payments', 1, """
        SELECT f.payment_id, f.payment_date, f.date_sk, f.customer_id, f.loan_id, m.method_code,
               f.payment_amount, f.principal_portion, f.interest_portion, f.penalty_portion,
               f.loan_status, f.branch_code
          FROM warehouse.fact_payments f LEFT JOIN warehouse.dim_payment_method m USING (method_sk)"""),
    ('dim_customer', 1, """
        SELECT customer_id, full_name, email, phone, city, country, segment
          FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted"""),
    ('dim_loan', 1, """
        SELECT loan_id, customer_id, product_name, product_type, amount, interest_rate, tenure_months,
               status, branch_code, loan_officer, disbursed_at, maturity_date
          FROM warehouse.dim_loan WHERE NOT is_deleted"""),
    ('fact_loans', 1, """
        SELECT loan_id, customer_id, principal_amount, outstanding_balance, total_paid, payment_count,
               loan_status, customer_segment, branch_code, disbursed_at, is_active, is_defaulted, is_repaid,
               last_payment_date
          FROM warehouse.fact_loans"""),
    ('payments_by_month', 3, """
        SELECT month, branch_code, method_sk, payment_count, total_amount, principal, interest, penalty
          FROM eds.payments_by_month"""),
    ('customer_payment_totals', 1, """
        SELECT customer_id, total_paid, payment_count, loan_count, last_payment_date
          FROM eds.customer_payment_totals"""),
]

# The same rows as the source has them, for the oracle itself: a full load
# must copy every attribute and keep exactly the payments the rules accept.
SOURCE_TABLES = {
    'fact_payments': """
        SELECT p.payment_id, p.payment_date, to_char(p.payment_date AT TIME ZONE 'UTC', 'YYYYMMDD')::integer,
               l.customer_id, p.loan_id, p.payment_method, p.amount, p.principal_portion, p.interest_portion,
               p.penalty_portion, l.status, l.branch_code
          FROM operational.payments p JOIN operational.loans l USING (loan_id)
         WHERE eds.payment_problem(p.loan_id, p.amount, p.principal_portion, p.interest_portion,
                                   p.penalty_portion, p.payment_date) IS NULL""",
    'dim_customer': """
        SELECT customer_id, full_name, email, phone, city, country, segment FROM operational.customers""",
    'dim_loan': """
        SELECT l.loan_id, l.customer_id, p.product_name, p.product_type, l.amount, l.interest_rate,
               l.tenure_months, l.status, l.branch_code, l.loan_officer, l.disbursed_at, l.maturity_date
          FROM operational.loans l LEFT JOIN operational.loan_products p USING (product_id)""",
}

# Invariants of the incremental warehouse alone: each query returns (key, what is wrong).
INTEGRITY = [
    ('one current version per customer', """
        SELECT customer_id::text, count(*) FILTER (WHERE is_current) || ' current versions'
          FROM warehouse.dim_customer GROUP BY customer_id HAVING count(*) FILTER (WHERE is_current) <> 1"""),
    ('versions numbered 1..n', """
        SELECT customer_id::text, 'versions ' || string_agg(version_no::text, ',' ORDER BY version_no)
          FROM warehouse.dim_customer GROUP BY customer_id
        HAVING min(version_no) <> 1 OR max(version_no) <> count(*)"""),
    ('the current version is the last one, and the only open one', """
        SELECT d.customer_id || ' v' || d.version_no,
               format('is_current %s, effective_to %s, last version %s', d.is_current, d.effective_to, m.last)
          FROM warehouse.dim_customer d
          JOIN (SELECT customer_id, max(version_no) AS last FROM warehouse.dim_customer GROUP BY 1) m
            USING (customer_id)
         WHERE d.is_current <> (d.version_no = m.last) OR d.is_current <> (d.effective_to = 'infinity')"""),
    ('each version ends where the next one starts', """
        SELECT a.customer_id || ' v' || a.version_no,
               format('effective_to %s, v%s effective_from %s', a.effective_to, b.version_no, b.effective_from)
          FROM warehouse.dim_customer a
          JOIN warehouse.dim_customer b ON b.customer_id = a.customer_id AND b.version_no = a.version_no + 1
         WHERE a.effective_to <> b.effective_from"""),
    ('effective_from <= effective_to', """
        SELECT customer_id || ' v' || version_no, format('%s .. %s', effective_from, effective_to)
          FROM warehouse.dim_customer WHERE effective_from > effective_to"""),
    ("a fact's customer_sk is its customer's version valid at payment_date, with that segment", """
        SELECT f.payment_id::text,
               format('customer_id %s, payment_date %s, customer_segment %s; customer_sk %s is %s v%s [%s, %s) %s',
                      f.customer_id, f.payment_date, f.customer_segment, f.customer_sk, c.customer_id,
                      c.version_no, c.effective_from, c.effective_to, c.segment)
          FROM warehouse.fact_payments f LEFT JOIN warehouse.dim_customer c ON c.customer_sk = f.customer_sk
         WHERE c.customer_sk IS NULL OR c.customer_id <> f.customer_id
            OR NOT ((c.version_no = 1 OR c.effective_from <= f.payment_date) AND f.payment_date < c.effective_to)
            OR f.customer_segment IS DISTINCT FROM c.segment"""),
    ("a fact's loan_sk is its loan's", """
        SELECT f.payment_id::text, format('loan_id %s, loan_sk %s is loan %s', f.loan_id, f.loan_sk, l.loan_id)
          FROM warehouse.fact_payments f LEFT JOIN warehouse.dim_loan l ON l.loan_sk = f.loan_sk
         WHERE l.loan_id IS DISTINCT FROM f.loan_id"""),
    ("a fact_loans row's keys are its loan's and its customer's current version", """
        SELECT f.loan_id::text, format('loan_sk %s is loan %s; customer_sk %s is %s (current %s)',
                                       f.loan_sk, l.loan_id, f.customer_sk, c.customer_id, c.is_current)
          FROM warehouse.fact_loans f
          LEFT JOIN warehouse.dim_loan l ON l.loan_sk = f.loan_sk
          LEFT JOIN warehouse.dim_customer c ON c.customer_sk = f.customer_sk
         WHERE l.loan_id IS DISTINCT FROM f.loan_id OR c.customer_id IS DISTINCT FROM f.customer_id
            OR NOT c.is_current"""),
]


def fetch(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    return [tuple(r) for r in cur], [d[0] for d in cur.description]


def show(value):
    """A value as the difference report prints it: text quoted (blanks and
    escapes visible), numbers plain."""
    return 'NULL' if value is None else repr(value) if isinstance(value, str) else str(value)


def keyed(rows, nkeys):
    out = collections.defaultdict(list)
    for row in rows:
        out[row[:nkeys]].append(row[nkeys:])
    return out


def diff_rows(title, columns, nkeys, rows_a, rows_b, name_a, name_b):
    """Lines describing how two row sets differ, compared by key (at most ROW_LIMIT)."""
    a, b = keyed(rows_a, nkeys), keyed(rows_b, nkeys)
    lines = []
    for key in sorted(set(a) | set(b), key=lambda k: tuple((v is None, v) for v in k)):
        va, vb = sorted(a.get(key, []), key=str), sorted(b.get(key, []), key=str)
        if va == vb:
            continue
        label = f'{title} {"/".join(str(k) for k in key)}'
        if len(va) == 1 and len(vb) == 1:
            changed = [f'{c} {name_a}={show(x)} {name_b}={show(y)}'
                       for c, x, y in zip(columns[nkeys:], va[0], vb[0]) if x != y]
            lines.append(f'{label}: ' + '; '.join(changed))
        else:
            rows = lambda vs: '; '.join(', '.join(f'{c}={show(x)}' for c, x in zip(columns[nkeys:], v))
                                        for v in vs) or '-'
            lines.append(f'{label}: {len(va)} rows in {name_a} ({rows(va)}), {len(vb)} in {name_b} ({rows(vb)})')
    if len(lines) > ROW_LIMIT:
        lines = lines[:ROW_LIMIT] + [f'{title}: ... and {len(lines) - ROW_LIMIT} more']
    return lines


def compare(src, wh, oracle):
    """How the incremental warehouse differs from the oracle, and the oracle
    from the source, table by table, as printable lines."""
    problems = []
    source_ids = {r[0] for r in fetch(src, 'SELECT payment_id FROM operational.payments')[0]}
    for title, nkeys, sql in WAREHOUSE_TABLES:
        rows_wh, columns = fetch(wh, sql)
        rows_oracle, _ = fetch(oracle, sql)
        problems += diff_rows(title, columns, nkeys, rows_wh, rows_oracle, 'incremental', 'oracle')
        if title in SOURCE_TABLES:
            rows_src, _ = fetch(src, SOURCE_TABLES[title])
            problems += diff_rows(f'oracle vs source: {title}', columns, nkeys, rows_oracle, rows_src,
                                  'oracle', 'source')
        if title == 'fact_payments':
            rejected_wh = sorted(source_ids - {r[0] for r in rows_wh}, key=int)
            rejected_oracle = sorted(source_ids - {r[0] for r in rows_oracle}, key=int)
            if rejected_wh != rejected_oracle:
                problems.append(f'payments of the source not in the facts: incremental {rejected_wh[:ROW_LIMIT]}, '
                                f'oracle {rejected_oracle[:ROW_LIMIT]}')
    return problems


def check_integrity(conn, name):
    """A warehouse's broken invariants (SCD2 versions, surrogate keys)."""
    problems = []
    for title, sql in INTEGRITY:
        rows, _ = fetch(conn, sql)
        problems += [f'integrity of the {name}: {title}: {key}: {what}' for key, what in rows[:ROW_LIMIT]]
    return problems


def check_reconcile(conn):
    """eds_reconcile() returns only differences with the source: none."""
    rows, _ = fetch(conn, 'SELECT check_name, check_key, source_value, warehouse_value FROM eds_reconcile()')
    return [f'eds_reconcile(): {name} [{key!r}] source {sv} warehouse {wv}' for name, key, sv, wv in rows[:ROW_LIMIT]]


# ---------------------------------------------------------------------------
# One seed, and the whole run
# ---------------------------------------------------------------------------

class SeedResult:
    def __init__(self, seed, dbs, problems, history, seconds):
        self.seed, self.dbs, self.problems = seed, dbs, problems
        self.history = history.log if history else []
        self.etl_runs = history.etl_runs if history else 0
        self.seconds = seconds

    @property
    def passed(self):
        return not self.problems


def run_seed(seed, opts, servers, model):
    """Plays the seed's history, loads the oracle, compares; drops the databases (unless kept)."""
    started = time.monotonic()
    dbs = SeedDatabases(servers, seed)
    dbs.create()
    problems = []
    history = None
    try:
        history = History(seed, opts, servers, dbs, model.copy())
        history.play()
        problems += history.failures
        with contextlib.closing(servers.connect('warehouse', dbs.oracle, name='eds-fuzz oracle')) as oracle, \
                contextlib.closing(servers.connect('primary', dbs.src, name='eds-fuzz compare')) as src:
            history.set_source(oracle, 'primary', f'oracle {dbs.oracle}')
            ok, text = run_etl(oracle)
            history.note(f'oracle {dbs.oracle}', f'first load: {text}')
            if ok:
                problems += compare(src, history.wh, oracle) + check_integrity(oracle, 'oracle')
            else:
                problems.append(f'the oracle could not load: {text}')
            problems += check_integrity(history.wh, 'incremental warehouse') + check_reconcile(history.wh)
    except psycopg2.Error as e:
        problems.append(f'driver error: {type(e).__name__} {e.pgcode}: {str(e).strip()}')
    finally:
        if history is not None:
            history.close()
        if not (problems and opts.keep):
            dbs.drop()
    return SeedResult(seed, dbs, problems, history, time.monotonic() - started)


def report(result, opts):
    """A failing seed: a line with its first problem, the others indented,
    how to replay it, and its history; a passing one only if verbose."""
    if result.passed and not (opts.verbose or opts.seed is not None):
        return
    head = 'FAIL' if not result.passed else 'ok'
    print(f'seed {result.seed}: {head} ({len(result.problems)} problems, {len(result.history)} steps, '
          f'{result.etl_runs} ETL runs, {result.seconds:.2f} s)'
          + (': ' + result.problems[0] if result.problems else ''))
    for line in result.problems[1:]:
        print('    ' + line)
    print(f'  replay: bin/eds-fuzz --seed {result.seed}{opts.history_flags}')
    for line in result.history:
        print('  | ' + line.replace('\n', '\\n'))
    sys.stdout.flush()


def parse_args():
    p = argparse.ArgumentParser(prog='eds-fuzz', description=__doc__.split('\n\n')[0])
    p.add_argument('--seeds', type=int, default=200, help='how many seeds to run (default 200)')
    p.add_argument('--start', type=int, default=1, help='first seed (default 1)')
    p.add_argument('--seed', type=int, help='run this one seed only (a replay)')
    p.add_argument('--verbose', action='store_true', help='print the history of passing seeds too')
    p.add_argument('--keep', action='store_true',
                   help='stop at the first failing seed and keep its servers running')
    p.add_argument('--max-ops', type=int, default=40, metavar='N',
                   help='at most N operations per history (default 40; at least 10 unless N is smaller)')
    p.add_argument('--continuous', action='store_true',
                   help='continuous ETL on in the incremental warehouse for the whole history '
                        '(its windows run between and during the steps and the runs)')
    p.add_argument('--simple', action='store_true',
                   help='no transaction stays open across an ETL run, no run goes on during writes')
    for category, what in CATEGORIES.items():
        p.add_argument(f'--no-{category}', dest='without', action='append_const', const=category,
                       help=f'leave out: {what}')
    opts = p.parse_args()
    opts.categories = set(CATEGORIES) - set(opts.without or [])
    # A seed's history depends on these too: a replay repeats them.
    opts.history_flags = ''.join(f' --no-{c}' for c in CATEGORIES if c not in opts.categories)
    opts.history_flags += (' --continuous' if opts.continuous else '')
    opts.history_flags += (' --simple' if opts.simple else '') + \
        (f' --max-ops {opts.max_ops}' if opts.max_ops != 40 else '')
    opts.seed_list = [opts.seed] if opts.seed is not None else range(opts.start, opts.start + opts.seeds)
    return opts


def port_base():
    """EDS_FUZZ_PORT_BASE, else the first of 17620, 17623, 17626 whose three
    ports are free (so that two runs on one machine do not collide)."""
    if os.environ.get('EDS_FUZZ_PORT_BASE'):
        return int(os.environ['EDS_FUZZ_PORT_BASE'])
    for base in (17620, 17623, 17626):
        try:
            for port in range(base, base + 3):
                with socket.socket() as sock:
                    sock.bind(('127.0.0.1', port))
            return base
        except OSError:
            continue
    sys.exit('differential.py: ports 17620-17628 are in use; set EDS_FUZZ_PORT_BASE')


def interrupt(signum, frame):
    raise KeyboardInterrupt()


def main():
    opts = parse_args()
    if os.geteuid() == 0:
        sys.exit('differential.py: PostgreSQL does not run as root; use bin/eds-fuzz')
    servers = Servers(port_base())
    atexit.register(servers.stop)
    # Both end the run the same way: servers stopped, summary printed, 130.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.monotonic()
    setup = 0.0
    passed = failed = 0
    interrupted = False
    try:
        servers.start()
        with contextlib.closing(servers.connect('primary', 'src_tmpl')) as conn:
            model = Model.load(conn)
        print(f'differential: eds {servers.eds_version}, servers in {servers.root} '
              f'(ports {servers.ports["primary"]}-{servers.ports["warehouse"]}), '
              f'categories: {", ".join(sorted(opts.categories)) or "none"}{", simple" if opts.simple else ""}')
        sys.stdout.flush()
        setup = time.monotonic() - t0
        for seed in opts.seed_list:
            result = run_seed(seed, opts, servers, model)
            report(result, opts)
            if result.passed:
                passed += 1
                continue
            failed += 1
            if not servers.alive():
                servers.keep_files = True
                print(f'differential: a server is down; stopping.  Its log: {servers.root}/*.log')
                break
            if opts.keep:
                servers.keep = True
                print(servers.how_to_connect(result.dbs))
                break
    except KeyboardInterrupt:
        interrupted = True
        print('differential: interrupted')
    except Exception:
        traceback.print_exc()
        servers.keep_files = True
        print(f'differential: stopped by the error above; the servers\' files and logs: {servers.root}')
        sys.exit(2)
    finally:
        servers.stop()
    total = time.monotonic() - t0
    seeds = passed + failed
    rate = seeds / max(total - setup, 1e-9) if seeds else 0.0
    print(f'differential: {passed} passed, {failed} failed; {rate:.2f} seeds/s, '
          f'{(total - setup) / max(seeds, 1):.2f} s/seed, {total:.1f} s total ({setup:.1f} s setup)')
    sys.exit(130 if interrupted else 1 if failed or seeds == 0 else 0)


if __name__ == '__main__':
    main()
