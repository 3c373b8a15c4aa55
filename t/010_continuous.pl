# Continuous ETL across real servers: start and stop, a call and the pg_cron
# job while it runs, the source stopped and started, a warehouse restart,
# kill -9 of the worker and of the warehouse in the middle of a window, the
# replica as source, DROP EXTENSION and DROP DATABASE while it runs.
# After each, the warehouse must equal a fresh full load of the source into
# another database (the oracle of the differential test), and
# eds_reconcile() must be clean.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $etl_password = 'etl-' . int(rand(1_000_000_000));

# ---------------------------------------------------------------- servers
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'eds'
eds.lag_sample_interval = 1
});
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
cron.host = '@{[ $warehouse->host ]}'
restart_after_crash = on
eds.continuous_max_backoff = 4
});
$warehouse->start;
$warehouse->safe_psql('postgres', 'CREATE EXTENSION eds; CREATE EXTENSION pg_cron;');

sub conninfo
{
	my ($node) = @_;
	return sprintf("host=%s port=%d dbname=postgres user=etl password=%s", $node->host, $node->port, $etl_password);
}
sub wh { return $warehouse->safe_psql('postgres', $_[0]); }

# Polls a warehouse query until it returns 't'; false after the timeout.
sub wait_for
{
	my ($sql, $seconds, $db) = @_;
	my $until = time + ($seconds // 60);
	while (time < $until)
	{
		my ($rc, $out) = $warehouse->psql($db // 'postgres', "SELECT ($sql)::text");
		return 1 if $rc == 0 && $out eq 'true';
		usleep(100_000);
	}
	return 0;
}

sub continuous_pid
{
	my ($db) = @_;
	return wh("SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE backend_type = 'eds continuous' "
		. "AND datname = '" . ($db // 'postgres') . "'");
}

# Source writes: new payments for random loans, balances and customers changed.
my $round = 0;
sub write_source
{
	my ($payments) = @_;
	$round++;
	$primary->safe_psql('postgres', qq{
		INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method, reference)
		SELECT loan_id, 1.25, 1.00, 0.25, 'mpesa', 'T010-$round'
		  FROM operational.loans, generate_series(1, 1 + $payments / 600) g ORDER BY random() LIMIT $payments;
		UPDATE operational.loans SET outstanding_balance = greatest(outstanding_balance - 1, 0)
		 WHERE loan_id % 13 = $round % 13;
		UPDATE operational.customers SET city = 'Kisumu-$round' WHERE customer_id % 17 = $round % 17;
		DELETE FROM operational.payments WHERE payment_id = (SELECT min(payment_id) + $round FROM operational.payments);
	});
}

# The warehouse holds everything committed on the source so far: its
# freshness (audit.etl_state.source_time) has passed the source's clock now.
sub caught_up
{
	my ($name, $seconds) = @_;
	my $now = $primary->safe_psql('postgres', 'SELECT clock_timestamp()');
	ok(wait_for("SELECT source_time > '$now' FROM audit.etl_state", $seconds),
		"$name: continuous mode catches up with the source by itself")
	  or diag(wh('SELECT run_id, status, origin, error_message FROM audit.etl_runs ORDER BY run_id DESC LIMIT 5'));
}

# The oracle: a fresh first load of the source into another database, then
# the same rows from both (natural keys only; surrogate keys differ).
my @compare = (
	'payments' => q{SELECT string_agg(concat_ws('|', f.payment_id, f.loan_id, f.customer_id, f.payment_amount,
		f.principal_portion, f.interest_portion, f.penalty_portion, m.method_code, f.payment_date, f.customer_segment,
		f.loan_status, f.branch_code), ',' ORDER BY f.payment_id)
		FROM warehouse.fact_payments f JOIN warehouse.dim_payment_method m USING (method_sk)},
	'customers' => q{SELECT string_agg(concat_ws('|', customer_id, full_name, email, city, segment, is_deleted), ','
		ORDER BY customer_id) FROM warehouse.dim_customer WHERE is_current},
	'loans' => q{SELECT string_agg(concat_ws('|', loan_id, customer_id, product_name, status, branch_code, is_deleted), ','
		ORDER BY loan_id) FROM warehouse.dim_loan},
	'loan totals' => q{SELECT string_agg(concat_ws('|', loan_id, outstanding_balance, total_paid, payment_count,
		last_payment_date), ',' ORDER BY loan_id) FROM warehouse.fact_loans},
	'monthly summary' => q{SELECT string_agg(concat_ws('|', month, branch_code, method_sk, payment_count,
		round(total_amount, 2), round(principal, 2), round(interest, 2), round(penalty, 2)), ','
		ORDER BY month, branch_code, method_sk) FROM eds.payments_by_month WHERE payment_count > 0},
	'customer summary' => q{SELECT string_agg(concat_ws('|', customer_id, round(total_paid, 2), payment_count,
		loan_count, last_payment_date), ',' ORDER BY customer_id) FROM eds.customer_payment_totals WHERE payment_count > 0});

sub oracle_check
{
	my ($name) = @_;
	$warehouse->safe_psql('postgres', 'DROP DATABASE IF EXISTS oracle WITH (FORCE)');
	$warehouse->safe_psql('postgres', 'CREATE DATABASE oracle');
	$warehouse->safe_psql('oracle', 'CREATE EXTENSION eds');
	$warehouse->safe_psql('oracle', "SELECT eds_set_source('" . conninfo($primary) . "')");
	is($warehouse->safe_psql('oracle', q{SELECT status || '/' || mode FROM eds_run_etl()}), 'success/full',
		"$name: the oracle's first load");
	for (my $i = 0; $i < @compare; $i += 2)
	{
		my ($what, $sql) = @compare[$i, $i + 1];
		my $incremental = $warehouse->safe_psql('postgres', $sql);
		my $oracle = $warehouse->safe_psql('oracle', $sql);
		ok($incremental eq $oracle, "$name: $what equal the fresh full load's")
		  or diag("incremental: " . substr($incremental, 0, 300) . "\noracle:      " . substr($oracle, 0, 300));
	}
	is(wh('SELECT count(*) FROM eds_reconcile()'), '0', "$name: eds_reconcile() is clean");
}

# ---------------------------------------------------------------- on
$warehouse->safe_psql('postgres', "SELECT eds_set_source('" . conninfo($primary) . "')");
like(wh("SELECT eds_start_continuous('200 milliseconds')"), qr/^continuous ETL on/, 'eds_start_continuous()');
ok(wait_for("EXISTS (SELECT FROM audit.etl_runs WHERE origin = 'continuous' AND mode = 'full' AND status = 'success')"),
	'the first window is the first load');
write_source(500);
caught_up('writes after the first load');
oracle_check('on');

my $source_sessions = $primary->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE usename = 'etl'");
write_source(50);
caught_up('more writes');
is($primary->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE usename = 'etl'"),
	$source_sessions, 'the worker keeps its source session between windows');

# ---------------------------------------------------------------- a call and the pg_cron job
is(wh(q{SELECT status FROM eds_run_etl()}), 'success', 'a call while continuous mode runs succeeds');
wh(q{SELECT eds_schedule_etl('* * * * *')});
write_source(200);
ok(wait_for(q{EXISTS (SELECT FROM cron.job_run_details d JOIN cron.job j USING (jobid)
	WHERE j.jobname = 'eds_etl' AND d.status = 'succeeded')}, 90),
	'the pg_cron job runs while continuous mode does, and succeeds')
  or diag(wh('SELECT status, return_message FROM cron.job_run_details'));
is(wh(q{SELECT count(*) FROM audit.etl_runs WHERE status IN ('failed', 'skipped')}), '0',
	'no run or window failed or was skipped');
wh('SELECT eds_unschedule_etl()');
caught_up('the call and the job');
oracle_check('a call and the pg_cron job');

# ---------------------------------------------------------------- the source stopped, then started
$primary->stop('fast');
ok(wait_for(q{EXISTS (SELECT FROM audit.etl_runs WHERE status = 'failed' AND origin = 'continuous' AND attempts >= 3)}, 60),
	'with the source down, the failing window is retried');
is(wh(q{SELECT count(*) FROM audit.etl_runs WHERE status = 'failed'}), '1',
	'the outage is one failed run row, counting its attempts');
like(wh(q{SELECT status || ': ' || value FROM eds_health() WHERE check_name = 'etl'}), qr/^critical: run \d+ failed/,
	'eds_health() says the ETL fails');
$primary->start;
write_source(300);
caught_up('after the source came back', 90);
is(wh(q{SELECT status FROM audit.etl_runs WHERE origin = 'continuous' ORDER BY run_id DESC LIMIT 1}), 'success',
	'it resumed by itself');
oracle_check('source stopped and started');

# ---------------------------------------------------------------- a warehouse restart
my $before = continuous_pid();
$warehouse->restart;
ok(wait_for(q{EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 60),
	'after a warehouse restart the worker is back (the state is in audit.etl_continuous)');
isnt(continuous_pid(), $before, 'a new worker');
write_source(300);
caught_up('after the warehouse restart');
oracle_check('warehouse restart');

# ---------------------------------------------------------------- kill -9 in the middle of a window
# A large change makes a long window; it is killed while it loads.
sub kill_in_window
{
	my ($what) = @_;
	write_source(20000);
	ok(wait_for(q{EXISTS (SELECT FROM audit.etl_progress WHERE phase IN ('extract', 'load'))}, 60),
		"$what: a window is loading")
	  or return;
	if ($what eq 'worker')
	{
		my $pid = continuous_pid();
		kill 'KILL', $pid;
	}
	else
	{
		# Its children notice the postmaster's death and end (a busy one at
		# its next wait); until then the shared memory is theirs.
		my ($postmaster) = split /\n/, slurp_file($warehouse->data_dir . '/postmaster.pid');
		my @children = grep { /^\d+$/ } split /\s+/, `pgrep -P $postmaster`;
		$warehouse->kill9;
		for (1 .. 600)
		{
			last unless grep { kill 0, $_ } ($postmaster, @children);
			usleep(100_000);
		}
		$warehouse->start;
	}
	ok(wait_for(q{EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 90),
		"$what killed: the worker is back");
	caught_up("kill -9 of the $what", 120);
	is(wh(q{SELECT count(*) FROM audit.etl_runs WHERE status = 'running'}), '0', "$what killed: no run left 'running'");
	oracle_check("kill -9 of the $what mid-window");
}
kill_in_window('worker');
like(wh(q{SELECT error_message FROM audit.etl_runs WHERE status = 'failed' ORDER BY run_id DESC LIMIT 1}),
	qr/interrupted/, 'the window the kill interrupted is recorded as failed');
kill_in_window('warehouse');

# ---------------------------------------------------------------- the replica as source
$warehouse->safe_psql('postgres', "SELECT eds_set_source('" . conninfo($replica) . "')");
$warehouse->safe_psql('postgres', "SELECT eds_set_source_primary('" . conninfo($primary) . "')");
write_source(400);
caught_up('from the replica', 90);
is(wh(q{SELECT source_is_replica FROM audit.etl_runs WHERE origin = 'continuous' AND status = 'success'
	ORDER BY run_id DESC LIMIT 1}), 't', 'the windows read the replica');
$primary->wait_for_catchup($replica);
oracle_check('replica as source');
$warehouse->safe_psql('postgres', "SELECT eds_set_source('" . conninfo($primary) . "')");

# ---------------------------------------------------------------- stop
like(wh('SELECT eds_stop_continuous()'), qr/^continuous ETL off/, 'eds_stop_continuous()');
ok(wait_for(q{NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 30),
	'the worker ends');
my $runs = wh('SELECT count(*) FROM audit.etl_runs');
write_source(10);
sleep 2;
is(wh('SELECT count(*) FROM audit.etl_runs'), $runs, 'off: nothing loads by itself');
$warehouse->restart;
sleep 3;
is(continuous_pid(), '0', 'off stays off across a restart');

# ---------------------------------------------------------------- DROP DATABASE and DROP EXTENSION while it runs
$warehouse->safe_psql('postgres', 'CREATE DATABASE scratch');
$warehouse->safe_psql('scratch', 'CREATE EXTENSION eds');
$warehouse->safe_psql('scratch', "SELECT eds_set_source('" . conninfo($primary) . "')");
$warehouse->safe_psql('scratch', "SELECT eds_start_continuous('200 milliseconds')");
ok(wait_for(q{EXISTS (SELECT FROM audit.etl_runs WHERE mode = 'full' AND status = 'success')}, 60, 'scratch'),
	'continuous mode in a second database');
my ($rc, $out, $err) = $warehouse->psql('postgres', 'DROP DATABASE scratch');
is($rc, 0, 'DROP DATABASE (without FORCE) of a database in continuous mode succeeds') or diag $err;
ok(wait_for(q{NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 30),
	'its worker is gone and does not come back');

wh(q{SELECT eds_start_continuous('200 milliseconds')});
ok(wait_for(q{EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 30), 'on again');
write_source(100);
caught_up('on again');
my $log_offset = -s $warehouse->logfile;
($rc, $out, $err) = $warehouse->psql('postgres', 'SET eds.allow_drop_with_data = on; DROP EXTENSION eds CASCADE');
is($rc, 0, 'DROP EXTENSION while continuous mode runs') or diag $err;
ok(wait_for(q{NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')}, 30),
	'the worker ends with the extension');
sleep 3;
is(continuous_pid(), '0', 'and is not started again');
my $log = slurp_file($warehouse->logfile, $log_offset);
my $fatals = () = $log =~ /eds continuous.*exited with exit code 1/g;
cmp_ok($fatals, '<=', 1, 'the worker ends cleanly (at most one error exit, on a drop in the middle of its read)');
wh('CREATE EXTENSION eds');
is(wh('SELECT enabled FROM audit.etl_continuous'), 'f', 'a new install starts with continuous mode off');

done_testing();
