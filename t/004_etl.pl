# The ETL across real servers: a primary with eds, a streaming replica, and
# a warehouse.  Incremental runs with inserts, updates and deletes; a write
# load during repeated runs; a long transaction that commits after a run;
# kill -9 of the warehouse and a restart of the primary in the middle of a
# run; the replica as source; two runs at once; a failed run recorded; a
# worker that stays for the next run.
# After each, eds_reconcile() must be clean and an independent check of
# counts and money (written here, not by eds) must agree.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $etl_password = 'etl-' . int(rand(1_000_000_000));

# ---------------------------------------------------------------- servers
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'");
# The ETL login must use its password, like any non-superuser.
my $hba = $primary->data_dir . '/pg_hba.conf';
my $hba_text = slurp_file($hba);
open(my $fh, '>', $hba) or die;
print $fh "local all etl scram-sha-256\n$hba_text";
close $fh;
$primary->start;
$primary->safe_psql('postgres', qq{
	CREATE EXTENSION eds;
	CREATE ROLE etl LOGIN PASSWORD '$etl_password' IN ROLE etl_reader;
	SELECT count(*) FROM eds_generate_demo_data(300, 600, 4000, 3);
});

$primary->backup('base');
my $replica = PostgreSQL::Test::Cluster->new('replica');
$replica->init_from_backup($primary, 'base', has_streaming => 1);
$replica->start;

my $warehouse = PostgreSQL::Test::Cluster->new('warehouse');
$warehouse->init;
$warehouse->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cron,eds'
cron.database_name = 'postgres'
restart_after_crash = on
});
$warehouse->start;
$warehouse->safe_psql('postgres', 'CREATE EXTENSION eds; CREATE EXTENSION pg_cron;');

sub set_source
{
	my ($node) = @_;
	my $conninfo = sprintf("host=%s port=%d dbname=postgres user=etl password=%s",
		$node->host, $node->port, $etl_password);
	$warehouse->safe_psql('postgres', "SELECT eds_set_source('$conninfo')");
}
set_source($primary);

sub run_etl
{
	return $warehouse->safe_psql('postgres',
		'SELECT status || \'/\' || mode FROM eds_run_etl()');
}

# Counts and sums computed here, independently of eds_reconcile().
sub independent_check
{
	my ($source, $name) = @_;
	my $src = $source->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM operational.payments) || ' ' ||
			   (SELECT coalesce(sum(amount), 0) FROM operational.payments) || ' ' ||
			   (SELECT count(*) FROM operational.loans) || ' ' ||
			   (SELECT coalesce(sum(outstanding_balance), 0) FROM operational.loans) || ' ' ||
			   (SELECT count(*) FROM operational.customers) || ' ' ||
			   (SELECT string_agg(customer_id || ':' || city || ':' || segment, ',' ORDER BY customer_id)
				  FROM operational.customers)});
	my $wh = $warehouse->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM warehouse.fact_payments) || ' ' ||
			   (SELECT coalesce(sum(payment_amount), 0) FROM warehouse.fact_payments) || ' ' ||
			   (SELECT count(*) FROM warehouse.fact_loans) || ' ' ||
			   (SELECT coalesce(sum(outstanding_balance), 0) FROM warehouse.fact_loans) || ' ' ||
			   (SELECT count(*) FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted) || ' ' ||
			   (SELECT string_agg(customer_id || ':' || city || ':' || segment, ',' ORDER BY customer_id)
				  FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted)});
	is($wh, $src, "$name: warehouse counts, sums and customers equal the source's");
	my $dups = $warehouse->safe_psql('postgres',
		'SELECT count(*) FROM (SELECT payment_id FROM warehouse.fact_payments GROUP BY 1 HAVING count(*) > 1) d');
	is($dups, '0', "$name: no payment loaded twice");
	is($warehouse->safe_psql('postgres', 'SELECT count(*) FROM eds_reconcile()'), '0',
		"$name: eds_reconcile() is clean");
}

# ---------------------------------------------------------------- first load, increments
is(run_etl(), 'success/full', 'first load');
independent_check($primary, 'first load');
is(run_etl(), 'success/incremental', 'run with no changes');

$primary->safe_psql('postgres', q{
	UPDATE operational.customers SET city = 'Lamu' WHERE customer_id % 10 = 0;
	DELETE FROM operational.payments WHERE payment_id % 50 = 0;
	UPDATE operational.payments SET payment_method = 'online' WHERE payment_id % 50 = 1;
	INSERT INTO operational.customers (full_name, email, segment) VALUES ('Zawadi New', 'zn@x.ke', 'sme');
	SELECT count(*) FROM (SELECT operational.post_payment(loan_id, 2.00, 'mpesa')
		FROM operational.loans WHERE status = 'active' AND outstanding_balance > 100 LIMIT 25) p;
	DELETE FROM operational.loans l WHERE status = 'pending'
	   AND NOT EXISTS (SELECT FROM operational.payments p WHERE p.loan_id = l.loan_id);
});
is(run_etl(), 'success/incremental', 'incremental run after inserts, updates and deletes');
independent_check($primary, 'after inserts, updates and deletes');
is($warehouse->safe_psql('postgres',
	"SELECT count(DISTINCT customer_id) FROM warehouse.dim_customer WHERE version_no = 2"),
	$primary->safe_psql('postgres', "SELECT count(*) FROM operational.customers WHERE customer_id % 10 = 0"),
	'each customer who moved has a second version');

# ---------------------------------------------------------------- long transaction
my $long = $primary->background_psql('postgres');
$long->query_safe(q{BEGIN; INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion,
	payment_method, payment_date, reference) SELECT min(loan_id), 7.77, 7.77, 0, 'cash', '2026-01-15', 'LONG-TXN'
	FROM operational.loans WHERE status = 'active'});
# A later transaction commits first.
$primary->safe_psql('postgres', q{INSERT INTO operational.payments (loan_id, amount, principal_portion,
	interest_portion, payment_method, payment_date, reference) SELECT min(loan_id), 3.33, 3.33, 0, 'cash',
	'2026-01-16', 'SHORT-TXN' FROM operational.loans WHERE status = 'active'});
is(run_etl(), 'success/incremental', 'run while a long transaction is open');
my $short_loaded = $warehouse->safe_psql('postgres',
	"SELECT count(*) FROM warehouse.fact_payments WHERE payment_amount = 3.33");
$long->query_safe('COMMIT');
$long->quit;
is(run_etl(), 'success/incremental', 'run after the long transaction committed');
is($warehouse->safe_psql('postgres',
	"SELECT count(*) FROM warehouse.fact_payments WHERE payment_amount IN (7.77, 3.33)"), '2',
	'both the long and the short transaction\'s payments arrived, once each');
ok($short_loaded eq '0' || $short_loaded eq '1', 'the short transaction was loaded at most once before');
independent_check($primary, 'after a long transaction');

# ---------------------------------------------------------------- writes during runs
my $script = $primary->basedir . '/soak.sql';
open($fh, '>', $script) or die;
print $fh q{\set lid random(1, 600)
\set cid random(1, 300)
SELECT count(*) FROM (SELECT operational.post_payment(loan_id, 1.00, 'mpesa') FROM operational.loans
	WHERE loan_id = :lid AND status = 'active' AND outstanding_balance > 50) p;
UPDATE operational.customers SET city = (ARRAY['Nairobi','Mombasa','Kisumu','Nakuru'])[1 + :lid % 4],
	segment = (ARRAY['retail','sme','corporate'])[1 + :cid % 3] WHERE customer_id = :cid;
INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method, payment_date, reference)
	SELECT loan_id, 0.50, 0.50, 0, 'cash', now(), 'SOAK' FROM operational.loans WHERE loan_id = :lid AND status = 'active';
DELETE FROM operational.payments WHERE payment_id = (SELECT max(payment_id) FROM operational.payments WHERE reference = 'SOAK')
	AND :cid % 3 = 0;
};
close $fh;
my $pgbench_out = '';
my $pgbench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '4', '-j', '2', '-T', '8', '-f', $script,
	  '-h', $primary->host, '-p', $primary->port, 'postgres' ],
	'>&', \$pgbench_out);
my $runs_ok = 0;
my $runs = 0;
while ($pgbench->pumpable)
{
	$runs++;
	$runs_ok++ if run_etl() =~ /^success/;
	sleep 1;
	$pgbench->pump_nb;
}
$pgbench->finish;
like($pgbench_out, qr/number of transactions actually processed: [1-9]/, 'pgbench wrote to the primary');
is($runs_ok, $runs, "all $runs runs during the write load succeeded");
is(run_etl(), 'success/incremental', 'final run after the write load');
independent_check($primary, 'after the write load');
is($warehouse->safe_psql('postgres',
	q{SELECT count(*) FROM (SELECT customer_id FROM warehouse.dim_customer WHERE is_current GROUP BY 1 HAVING count(*) > 1) x}),
	'0', 'one current version per customer');

# ---------------------------------------------------------------- two runs at once
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'TWO-RUNS' WHERE loan_id % 7 = 0});
my $a = $warehouse->background_psql('postgres');
my $b = $warehouse->background_psql('postgres');
$a->query_until(qr/start_a/, "\\echo start_a\nSELECT 'A:' || status FROM eds_run_etl();\n");
$b->query_until(qr/start_b/, "\\echo start_b\nSELECT 'B:' || status FROM eds_run_etl();\n");
$a->quit;
$b->quit;
my $two = $a->{stdout} . ' ' . $b->{stdout};
like($two, qr/A:(success|skipped)/, 'first concurrent call finished');
like($two, qr/B:(success|skipped)/, 'second concurrent call finished');
run_etl();
independent_check($primary, 'after two concurrent runs');

# ---------------------------------------------------------------- kill -9 of the warehouse mid-run
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'KILL-9' WHERE loan_id % 5 = 0});
my $blocker = $warehouse->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK warehouse.fact_loans IN ACCESS EXCLUSIVE MODE;');
my $victim = $warehouse->background_psql('postgres', on_error_stop => 0);
$victim->query_until(qr/start_v/, "\\echo start_v\nSELECT status FROM eds_run_etl();\n");
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND wait_event_type = 'Lock'})
  or die 'ETL worker did not reach the load';
my $worker_pid = $warehouse->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'eds etl' AND wait_event_type = 'Lock'});
kill 'KILL', $worker_pid;
# The postmaster restarts every backend after a crash: wait for recovery.
$warehouse->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
eval { $blocker->quit; $victim->quit; };
is(run_etl(), 'success/incremental', 'run after the warehouse crashed mid-run');
like($warehouse->safe_psql('postgres',
	q{SELECT string_agg(error_message, ',') FROM audit.etl_runs WHERE status = 'failed'}),
	qr/interrupted/, 'the crashed run is recorded as failed');
independent_check($primary, 'after kill -9 of the warehouse');

# ---------------------------------------------------------------- primary restart mid-run
for my $mode ('immediate', 'fast')
{
	$primary->safe_psql('postgres', qq{UPDATE operational.customers SET city = 'Garissa-$mode' WHERE customer_id % 9 = 0});
	my $src_blocker = $primary->background_psql('postgres');
	$src_blocker->query_safe('BEGIN; LOCK operational.customers IN ACCESS EXCLUSIVE MODE;');
	my $runner = $warehouse->background_psql('postgres', on_error_stop => 0);
	$runner->query_until(qr/start_r/, "\\echo start_r\nSELECT status FROM eds_run_etl();\n");
	$primary->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'eds_etl' AND wait_event_type = 'Lock'})
	  or die 'ETL did not reach the extraction';
	$primary->stop($mode);
	$primary->start;
	eval { $src_blocker->quit; };
	$runner->quit;
	like($warehouse->safe_psql('postgres',
		q{SELECT error_message FROM audit.etl_runs WHERE status = 'failed' ORDER BY run_id DESC LIMIT 1}),
		qr/ETL source/, "the run cut by a $mode restart of the primary is recorded as failed, naming the source");
	is(run_etl(), 'success/incremental', "run after the $mode restart of the primary");
	independent_check($primary, "after the $mode restart of the primary");
}

# ---------------------------------------------------------------- the source session killed
# During the extract: the ETL's session on the primary is terminated while
# it waits on a lock there.
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Voi' WHERE customer_id % 13 = 0});
my $locker = $primary->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK operational.customers IN ACCESS EXCLUSIVE MODE;');
my $victim2 = $warehouse->background_psql('postgres', on_error_stop => 0);
$victim2->query_until(qr/start_t/, "\\echo start_t\nSELECT status FROM eds_run_etl();\n");
$primary->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'eds_etl' AND wait_event_type = 'Lock'})
  or die 'ETL did not reach the extraction';
$primary->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'eds_etl'});
$victim2->quit;
$locker->query_safe('COMMIT');
$locker->quit;
like($warehouse->safe_psql('postgres',
	q{SELECT status || ': ' || error_message FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/^failed: ETL source failed while extracting rows/, 'a source session killed mid-extract fails the run, saying so');
is(run_etl(), 'success/incremental', 'the next run succeeds');
independent_check($primary, 'after the source session was killed mid-extract');

# During the load: the extract is done and the source session idles while
# the warehouse waits on a lock; killing it must not matter to the load.
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'TERM' WHERE loan_id % 13 = 0});
my $wlock = $warehouse->background_psql('postgres');
$wlock->query_safe('BEGIN; LOCK warehouse.fact_loans IN ACCESS EXCLUSIVE MODE;');
my $victim3 = $warehouse->background_psql('postgres', on_error_stop => 0);
$victim3->query_until(qr/start_l/, "\\echo start_l\nSELECT status FROM eds_run_etl();\n");
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND wait_event_type = 'Lock'})
  or die 'ETL worker did not reach the load';
$primary->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'eds_etl'});
$wlock->query_safe('COMMIT');
$wlock->quit;
$victim3->quit;
like($warehouse->safe_psql('postgres',
	q{SELECT status FROM audit.etl_runs WHERE status <> 'skipped' ORDER BY run_id DESC LIMIT 1}),
	qr/^success$/, 'a source session killed during the load: the load, already extracted, commits');
is(run_etl(), 'success/incremental', 'the next run succeeds');
independent_check($primary, 'after the source session was killed during the load');

# ---------------------------------------------------------------- unreachable sources
for my $case (
	[ "host=127.0.0.1 port=1 dbname=postgres user=etl password=$etl_password", qr/could not connect to the ETL source.*port=1/s, 'a wrong port' ],
	[ sprintf('host=%s port=%d dbname=postgres user=etl password=wrong', $primary->host, $primary->port),
	  qr/could not connect to the ETL source.*password authentication failed/s, 'a wrong password' ],
	[ 'host=no-such-host.invalid port=5432 dbname=postgres user=etl password=x',
	  qr/could not connect to the ETL source.*no-such-host\.invalid/s, 'a host name that does not resolve' ])
{
	my ($conninfo, $expect, $what) = @$case;
	$warehouse->safe_psql('postgres', "SELECT eds_set_source('$conninfo')");
	my ($ret, $out, $err) = $warehouse->psql('postgres', 'SELECT status FROM eds_run_etl()');
	isnt($ret, 0, "$what: the run fails");
	like($err . $warehouse->safe_psql('postgres',
		q{SELECT error_message || ' ' || coalesce(error_detail, '') FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
		$expect, "$what: the error names the server and says what failed");
	unlike($err, qr/\Q$etl_password\E/, "$what: the error does not show the password");
}
set_source($primary);

# ---------------------------------------------------------------- a timeout on the warehouse
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'TIMEOUT' WHERE loan_id % 17 = 0});
$warehouse->safe_psql('postgres', q{ALTER DATABASE postgres SET lock_timeout = '500ms'});
my $tlock = $warehouse->background_psql('postgres');
$tlock->query_safe('BEGIN; LOCK warehouse.fact_loans IN ACCESS EXCLUSIVE MODE;');
my ($tret, $tout, $terr) = $warehouse->psql('postgres', 'SELECT status FROM eds_run_etl()');
$tlock->query_safe('COMMIT');
$tlock->quit;
$warehouse->safe_psql('postgres', q{ALTER DATABASE postgres RESET lock_timeout});
isnt($tret, 0, 'a lock timeout on the warehouse fails the run');
like($terr, qr/lock timeout/, 'the caller is told it was a lock timeout');
is(run_etl(), 'success/incremental', 'the next run succeeds');
independent_check($primary, 'after a lock timeout on the warehouse');

# ---------------------------------------------------------------- the replica as source
$primary->safe_psql('postgres', q{UPDATE operational.customers SET segment = 'corporate' WHERE customer_id = 5;
	SELECT count(*) FROM (SELECT operational.post_payment(loan_id, 1.50, 'cash')
		FROM operational.loans WHERE status = 'active' AND outstanding_balance > 100 LIMIT 3) p});
$primary->wait_for_catchup($replica);
set_source($replica);
is(run_etl(), 'success/incremental', 'run reading the streaming replica');
is($warehouse->safe_psql('postgres',
	'SELECT source_is_replica FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1'), 't',
	'the run row says it read a replica');
independent_check($replica, 'replica as source');

# A replica too far behind is refused, not loaded from.
$warehouse->safe_psql('postgres', 'ALTER SYSTEM SET eds.max_source_lag = 2');
$warehouse->reload;
$replica->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
sleep 3;
my ($lret, $lout, $lerr) = $warehouse->psql('postgres', 'SELECT status FROM eds_run_etl()');
isnt($lret, 0, 'a run from a replica lagging more than eds.max_source_lag fails');
like($lerr, qr/ETL source replica is \d+ s behind the primary, more than eds.max_source_lag/,
	'the error says how far behind the replica is');
$replica->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
$primary->safe_psql('postgres', 'SELECT eds_sample_replication_lag()');
$primary->wait_for_catchup($replica);
is(run_etl(), 'success/incremental', 'caught up again, the replica is used');
ok($warehouse->safe_psql('postgres',
	'SELECT source_lag < interval \'2 seconds\' FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1') eq 't',
	'the run row records the replica\'s lag');
$warehouse->safe_psql('postgres', 'ALTER SYSTEM RESET eds.max_source_lag');
$warehouse->reload;
set_source($primary);

# ---------------------------------------------------------------- a failed run is recorded
$primary->stop('fast');
my ($ret, $out, $err) = $warehouse->psql('postgres', 'SELECT status FROM eds_run_etl()');
isnt($ret, 0, 'a run with the source down fails');
like($err, qr/could not connect to the ETL source/, 'the error names the source');
like($warehouse->safe_psql('postgres',
	q{SELECT status || ': ' || error_message FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/^failed: could not connect/, 'the failure is committed in audit.etl_runs');
$primary->start;
is(run_etl(), 'success/incremental', 'the next run succeeds');
independent_check($primary, 'after the failed run');

# ---------------------------------------------------------------- cancel of the caller
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'CANCEL' WHERE loan_id % 11 = 0});
my $holder = $warehouse->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK warehouse.fact_loans IN ACCESS EXCLUSIVE MODE;');
my $caller = $warehouse->background_psql('postgres', on_error_stop => 0);
$caller->query_until(qr/start_c/, "\\echo start_c\nSELECT status FROM eds_run_etl();\n");
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND wait_event_type = 'Lock'})
  or die 'ETL worker did not reach the load';
is($warehouse->safe_psql('postgres', 'SELECT phase FROM audit.etl_progress'), 'load',
	'audit.etl_progress shows the run in its load phase');
$warehouse->safe_psql('postgres',
	q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT status FROM eds_run_etl()%' AND pid <> pg_backend_pid()});
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND state <> 'idle'})
  or die 'the ETL worker did not stop the run after the cancel';
$holder->query_safe('COMMIT');
$holder->quit;
$caller->quit;
like($warehouse->safe_psql('postgres',
	q{SELECT status || ': ' || error_message FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/^failed: canceled: the caller of eds_run_etl\(\) stopped waiting \(canceling statement due to user request\)/,
	'a cancelled caller stops the worker, which records the run as failed, with the caller\'s reason');
is($warehouse->safe_psql('postgres', q{SELECT count(*) FROM warehouse.fact_payments f
	JOIN warehouse.dim_loan l USING (loan_id) WHERE l.branch_code = 'CANCEL'}), '0',
	'nothing of the cancelled run is visible');
is(run_etl(), 'success/incremental', 'the run after the cancel succeeds');
independent_check($primary, 'after a cancelled run');

# ---------------------------------------------------------------- lag history reaches Metabase
$primary->safe_psql('postgres', 'SELECT eds_sample_replication_lag()');
is(run_etl(), 'success/incremental', 'run after a lag sample');
is($warehouse->safe_psql('postgres', q{SELECT count(*) = (SELECT count(*) FROM warehouse.replication_lag_history)
	FROM warehouse.replication_lag_history WHERE replica = 'replica'}), 't',
	'the primary\'s lag samples are copied into the warehouse');
$warehouse->safe_psql('postgres', 'CREATE ROLE metabase LOGIN IN ROLE warehouse_reader');
is($warehouse->safe_psql('postgres', q{SET ROLE metabase; SELECT status FROM warehouse.vw_replication_lag_current}),
	'streaming', 'warehouse_reader sees the replica\'s current lag');

# ---------------------------------------------------------------- the source replica promoted mid-run
$primary->safe_psql('postgres', q{UPDATE operational.customers SET segment = 'sme' WHERE customer_id % 19 = 0});
$primary->wait_for_catchup($replica);
set_source($replica);
my $plock = $warehouse->background_psql('postgres');
$plock->query_safe('BEGIN; LOCK warehouse.fact_loans IN ACCESS EXCLUSIVE MODE;');
my $promoted_run = $warehouse->background_psql('postgres', on_error_stop => 0);
$promoted_run->query_until(qr/start_p/, "\\echo start_p\nSELECT status FROM eds_run_etl();\n");
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND wait_event_type = 'Lock'})
  or die 'ETL worker did not reach the load';
$replica->promote;
$replica->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'promotion did not finish';
$plock->query_safe('COMMIT');
$plock->quit;
$promoted_run->quit;
is($warehouse->safe_psql('postgres',
	q{SELECT status || '/' || source_is_replica FROM audit.etl_runs WHERE status <> 'skipped' ORDER BY run_id DESC LIMIT 1}),
	'success/true', 'the run in flight when its replica was promoted committed what it read, and says it read a replica');
is(run_etl(), 'success/incremental', 'the next run reads the promoted server');
is($warehouse->safe_psql('postgres', 'SELECT source_is_replica FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1'),
	'f', 'and records that it is now a primary');
independent_check($replica, 'after the source replica was promoted mid-run');
set_source($primary);

# ---------------------------------------------------------------- a worker that stays
# After a run the worker waits (eds.etl_worker_idle) with its source
# connection; the next run is handed to it, the connection is reused while
# it answers, and reopened when the source restarted.
sub etl_worker_pid
{
	return $warehouse->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'eds etl'});
}
sub source_sessions
{
	return $primary->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE usename = 'etl' AND application_name = 'eds_etl'});
}
is(run_etl(), 'success/incremental', 'a run to start a worker');
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eds etl' AND state = 'idle'})
  or die 'the ETL worker did not wait for the next run';
my $waiting = etl_worker_pid();
my $session = source_sessions();
like($session, qr/^\d+$/, 'the waiting worker keeps one session on the source');
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'WARM' WHERE loan_id % 13 = 0});
is(run_etl(), 'success/incremental', 'a run handed to the waiting worker');
is(etl_worker_pid(), $waiting, 'the same worker ran it');
is(source_sessions(), $session, 'over the same source session');
independent_check($primary, 'after a run in a waiting worker');
$primary->restart;
$primary->safe_psql('postgres', q{UPDATE operational.loans SET branch_code = 'AFTER-RESTART' WHERE loan_id % 13 = 0});
is(run_etl(), 'success/incremental', 'after the source restarted, the waiting worker reconnects and runs');
isnt(source_sessions(), $session, 'over a new session');
independent_check($primary, 'after a source restart under a waiting worker');
# With eds.etl_worker_idle = 0 the worker ends after each run.
$warehouse->safe_psql('postgres', q{ALTER SYSTEM SET eds.etl_worker_idle = 0; SELECT pg_reload_conf()});
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'eds etl'})
  or die 'the waiting worker did not end after eds.etl_worker_idle = 0';
is(run_etl(), 'success/incremental', 'a run with eds.etl_worker_idle = 0');
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'eds etl'})
  or die 'the worker did not end after its run';
pass('with eds.etl_worker_idle = 0 the worker ends after its run');
$warehouse->safe_psql('postgres', q{ALTER SYSTEM RESET eds.etl_worker_idle; SELECT pg_reload_conf()});

# ---------------------------------------------------------------- scheduling with pg_cron
my $job = $warehouse->safe_psql('postgres', q{SELECT eds_schedule_etl('*/15 * * * *')});
like($job, qr/^\d+$/, 'eds_schedule_etl returns the pg_cron job id');
is($warehouse->safe_psql('postgres', q{SELECT schedule || ' ' || command FROM cron.job WHERE jobname = 'eds_etl'}),
	'*/15 * * * * SELECT status FROM public.eds_run_etl()', 'the job runs eds_run_etl every 15 minutes');
$warehouse->safe_psql('postgres', 'CREATE ROLE watcher LOGIN IN ROLE pg_monitor');
is($warehouse->safe_psql('postgres', q{SET ROLE watcher;
	SELECT string_agg(check_name || '=' || status, ',' ORDER BY check_name) FROM eds_health()
	 WHERE check_name LIKE 'etl%'}), 'etl=ok,etl freshness=ok,etl schedule=ok,etl window=ok',
	'a pg_monitor login sees the ETL, its window, its freshness and its pg_cron job in eds_health()');
is($warehouse->safe_psql('postgres', 'SELECT eds_unschedule_etl()'), 't', 'eds_unschedule_etl removes it');

done_testing();
