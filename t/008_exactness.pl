# The ETL stays exact through every key lifecycle: one test per way the
# source can hold a key that a 1.0 warehouse got wrong (docs/etl.md, "The
# contract").  After each, the warehouse must equal the source, compared
# here row by row (not only by eds_reconcile()).
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $etl_password = 'etl-' . int(rand(1_000_000_000));

# ---------------------------------------------------------------- servers
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1, extra => ['--encoding=UTF8', '--locale=C']);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'eds'
max_prepared_transactions = 10
});
my $hba = $primary->data_dir . '/pg_hba.conf';
my $hba_text = slurp_file($hba);
open(my $fh, '>', $hba) or die;
print $fh "local all etl scram-sha-256\n$hba_text";
close $fh;
$primary->start;
$primary->safe_psql('postgres', qq{
	CREATE EXTENSION eds;
	CREATE ROLE etl LOGIN PASSWORD '$etl_password' IN ROLE etl_reader;
	SELECT count(*) FROM eds_generate_demo_data(60, 120, 1200, 3);
	CREATE DATABASE other;
});
$primary->safe_psql('other', 'CREATE EXTENSION eds; SELECT count(*) FROM eds_generate_demo_data(20, 40, 300, 5)');

$primary->backup('base');
my $replica = PostgreSQL::Test::Cluster->new('replica');
$replica->init_from_backup($primary, 'base', has_streaming => 1);
$replica->start;

my $warehouse = PostgreSQL::Test::Cluster->new('warehouse');
$warehouse->init(extra => ['--encoding=UTF8', '--locale=C']);
$warehouse->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'\neds.etl_stall_warn = '1s'\n");
$warehouse->start;
$warehouse->safe_psql('postgres', q{
	CREATE EXTENSION eds;
	CREATE DATABASE latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
});
$warehouse->safe_psql('latin1', 'CREATE EXTENSION eds');

sub set_source
{
	my ($db, $node, $srcdb) = @_;
	my $conninfo = sprintf("host=%s port=%d dbname=%s user=etl password=%s",
		$node->host, $node->port, $srcdb // 'postgres', $etl_password);
	$warehouse->safe_psql($db, "SELECT eds_set_source('$conninfo')");
}
set_source('postgres', $primary);
set_source('latin1', $primary);

sub run_etl
{
	my ($db) = @_;
	my ($rc, $out, $err) = $warehouse->psql($db // 'postgres',
		q{SELECT status || '/' || mode FROM eds_run_etl()});
	return $rc == 0 ? $out : "error: $err";
}

# The same rows, as text, from both sides: what the warehouse must hold.
my %source_rows = (
	payments => q{SELECT string_agg(concat_ws('|', payment_id, loan_id, amount, principal_portion,
			interest_portion, penalty_portion, payment_method, extract(epoch FROM payment_date)), ','
			ORDER BY payment_id) FROM operational.payments
		WHERE eds.payment_problem(loan_id, amount, principal_portion, interest_portion, penalty_portion,
								  payment_date) IS NULL},
	loans => q{SELECT string_agg(concat_ws('|', l.loan_id, l.customer_id, p.product_name, l.status,
			l.branch_code, l.outstanding_balance), ',' ORDER BY l.loan_id)
		FROM operational.loans l JOIN operational.loan_products p USING (product_id)},
	customers => q{SELECT string_agg(concat_ws('|', customer_id, full_name, city, segment, email), ','
			ORDER BY customer_id) FROM operational.customers},
	totals => q{SELECT string_agg(concat_ws('|', l.loan_id, coalesce(sum, 0)::numeric(30,2), coalesce(n, 0)), ',' ORDER BY l.loan_id)
		FROM operational.loans l LEFT JOIN (SELECT loan_id, sum(amount), count(*) AS n FROM operational.payments
			WHERE eds.payment_problem(loan_id, amount, principal_portion, interest_portion, penalty_portion,
									  payment_date) IS NULL GROUP BY loan_id) p USING (loan_id)});
my %warehouse_rows = (
	payments => q{SELECT string_agg(concat_ws('|', f.payment_id, f.loan_id, f.payment_amount, f.principal_portion,
			f.interest_portion, f.penalty_portion, m.method_code, extract(epoch FROM f.payment_date)), ','
			ORDER BY f.payment_id) FROM warehouse.fact_payments f JOIN warehouse.dim_payment_method m USING (method_sk)},
	loans => q{SELECT string_agg(concat_ws('|', d.loan_id, d.customer_id, d.product_name, d.status,
			d.branch_code, f.outstanding_balance), ',' ORDER BY d.loan_id)
		FROM warehouse.dim_loan d JOIN warehouse.fact_loans f USING (loan_id) WHERE NOT d.is_deleted},
	customers => q{SELECT string_agg(concat_ws('|', customer_id, full_name, city, segment, email), ','
			ORDER BY customer_id) FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted},
	totals => q{SELECT string_agg(concat_ws('|', loan_id, total_paid, payment_count), ',' ORDER BY loan_id)
		FROM warehouse.fact_loans});

# Say where two row lists part, so a failure is readable.
sub first_difference
{
	my ($src, $wh) = @_;
	my @s = split /,/, $src;
	my @w = split /,/, $wh;
	for my $i (0 .. ($#s > $#w ? $#s : $#w))
	{
		my ($a, $b) = ($s[$i] // '(none)', $w[$i] // '(none)');
		next if $a eq $b;
		diag("first difference at row $i: source '$a', warehouse '$b'");
		return;
	}
}

sub exact
{
	my ($name, $db, $srcnode, $srcdb) = @_;
	$db //= 'postgres';
	$srcnode //= $primary;
	for my $t (sort keys %source_rows)
	{
		my $src = $srcnode->safe_psql($srcdb // 'postgres', $source_rows{$t});
		my $wh = $warehouse->safe_psql($db, $warehouse_rows{$t});
		ok($src eq $wh, "$name: warehouse $t equal the source's") or first_difference($src, $wh);
	}
	is($warehouse->safe_psql($db, 'SELECT count(*) FROM eds_reconcile()'), '0', "$name: eds_reconcile() is clean");
}

# A transaction that keeps its id open across runs, from any session.
sub hold_xid
{
	my ($gid, $sql) = @_;
	$sql //= 'SELECT pg_current_xact_id()';
	$primary->safe_psql('postgres', "BEGIN; $sql; PREPARE TRANSACTION '$gid'");
}
sub release_xid
{
	my ($gid) = @_;
	$primary->safe_psql('postgres', "COMMIT PREPARED '$gid'");
}

# ---------------------------------------------------------------- first load overlapped by open transactions
# A payment committed after an open transaction is in the first load's
# snapshot but in a window two runs later (1.0: duplicate key, every run after).
hold_xid('a', "UPDATE operational.customers SET city = 'Kitui' WHERE customer_id = 1");
hold_xid('b');
$primary->safe_psql('postgres', q{INSERT INTO operational.payments (loan_id, amount, principal_portion,
	interest_portion, payment_method, payment_date) VALUES (1, 50, 50, 0, 'cash', '2025-03-03')});
is(run_etl(), 'success/full', 'first_load_overlap: first load while two transactions are open');
release_xid('a');
is(run_etl(), 'success/incremental', 'first_load_overlap: a run that merges something while one is still open');
release_xid('b');
is(run_etl(), 'success/incremental', 'first_load_overlap: the run whose window holds the payment the first load took');
is(run_etl(), 'success/incremental', 'first_load_overlap: and the next run');
exact('first_load_overlap');

# ---------------------------------------------------------------- delete and re-insert across windows
# Correct a payment: delete it, commit, insert it again with the same id,
# while another transaction is open (1.0: stuck for good on a duplicate key).
$primary->safe_psql('postgres', q{CREATE TABLE saved AS SELECT * FROM operational.payments WHERE payment_id = 10;
	DELETE FROM operational.payments WHERE payment_id = 10});
hold_xid('c');
$primary->safe_psql('postgres', q{INSERT INTO operational.payments SELECT * FROM saved});
is(run_etl(), 'success/incremental', 'delete_reinsert_same_id: run while the window ends between the two');
release_xid('c');
is(run_etl(), 'success/incremental', 'delete_reinsert_same_id: the run whose window holds only the insert');
# The same again, the re-inserted row moved to another month (another partition).
$primary->safe_psql('postgres', q{DELETE FROM operational.payments WHERE payment_id = 10});
hold_xid('d');
$primary->safe_psql('postgres', q{INSERT INTO operational.payments SELECT payment_id, loan_id, amount + 1,
	principal_portion + 1, interest_portion, penalty_portion, payment_method, payment_date - interval '5 months',
	reference, created_at, updated_at FROM saved});
is(run_etl(), 'success/incremental', 'delete_reinsert_other_month: first run');
$primary->safe_psql('postgres', q{UPDATE operational.payments SET payment_date = payment_date + interval '2 months'
	WHERE payment_id = 10});
release_xid('d');
is(run_etl(), 'success/incremental', 'delete_reinsert_other_month: second run');
is(run_etl(), 'success/incremental', 'delete_reinsert_other_month: third run');
is($warehouse->safe_psql('postgres', 'SELECT count(*) FROM warehouse.fact_payments WHERE payment_id = 10'), '1',
	'delete_reinsert_other_month: one fact for the payment, in one partition');
exact('delete_reinsert_same_id');

# ---------------------------------------------------------------- primary-key update
$primary->safe_psql('postgres', q{UPDATE operational.payments SET payment_id = 900000 WHERE payment_id = 11});
is(run_etl(), 'success/incremental', 'primary_key_update: run');
exact('primary_key_update');

# ---------------------------------------------------------------- a no-op bulk update writes and counts nothing
my $noop = $primary->safe_psql('postgres', q{UPDATE operational.payments SET amount = amount WHERE payment_id < 200;
	SELECT count(*) FROM operational.payments WHERE payment_id < 200});
is($warehouse->safe_psql('postgres', q{SELECT (table_counts #>> '{payments,read}') || '/' ||
	(table_counts #>> '{payments,updated}') FROM eds_run_etl()}), "$noop/0",
	"noop_bulk_update: $noop payments read, none counted as updated");

# ---------------------------------------------------------------- product renamed
$primary->safe_psql('postgres', q{UPDATE operational.loan_products SET product_name = product_name || ' (2026)'
	WHERE product_id = (SELECT min(product_id) FROM operational.loan_products)});
is(run_etl(), 'success/incremental', 'product_rename: run');
exact('product_rename');

# ---------------------------------------------------------------- TRUNCATE
# The project's own recipe: truncate, then regenerate; ids restart.
$primary->safe_psql('postgres', q{TRUNCATE operational.payments RESTART IDENTITY;
	INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method, payment_date)
	SELECT loan_id, 10 + loan_id % 7, 10 + loan_id % 7, 0, 'mpesa', '2026-02-01'::timestamptz + loan_id * interval '1 hour'
	  FROM operational.loans});
is(run_etl(), 'success/resync', 'truncate_restart_identity: the run is a resync');
like($warehouse->safe_psql('postgres', 'SELECT note FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1'),
	qr/truncated/, 'truncate_restart_identity: the run row says why');
exact('truncate_restart_identity');
is(run_etl(), 'success/incremental', 'truncate_restart_identity: the next run is incremental again');

# TRUNCATE ... CASCADE from customers empties everything.
$primary->safe_psql('other', 'TRUNCATE operational.customers CASCADE');
set_source('postgres', $primary, 'other');

# ---------------------------------------------------------------- another source database
like(run_etl(), qr/another database than the one this warehouse was loaded from/,
	'source_repointed: a run from another database is refused');
like($warehouse->safe_psql('postgres', q{SELECT error_detail FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/eds_etl_resync/, 'source_repointed: the run row says how to accept it');
$warehouse->safe_psql('postgres', 'SELECT eds_etl_resync()');
is(run_etl(), 'success/resync', 'source_repointed: after eds_etl_resync() the run is a resync');
exact('source_repointed (truncated cascade)', 'postgres', $primary, 'other');
$primary->safe_psql('other', 'SELECT count(*) FROM eds_generate_demo_data(20, 40, 300, 7)');
is(run_etl(), 'success/incremental', 'truncate_cascade_regenerated: the regenerated rows arrive incrementally');
exact('truncate_cascade_regenerated', 'postgres', $primary, 'other');
set_source('postgres', $primary);
$warehouse->safe_psql('postgres', 'SELECT eds_etl_resync()');
is(run_etl(), 'success/resync', 'source_repointed: back to the first source with a resync');
exact('source_repointed back');

# ---------------------------------------------------------------- sums beyond numeric(16,2)
$primary->safe_psql('postgres', q{INSERT INTO operational.payments (loan_id, amount, principal_portion,
	interest_portion, payment_method, payment_date)
	SELECT 2, 999999999999.99, 0, 999999999999.99, 'bank_transfer', '2026-03-01'::timestamptz + g * interval '1 minute'
	  FROM generate_series(1, 150) g});
is(run_etl(), 'success/incremental', 'loan_total_overflow: a loan paid more than 10^14 in total');
is($warehouse->safe_psql('postgres', 'SELECT total_paid > 1e14 FROM warehouse.fact_loans WHERE loan_id = 2'), 't',
	'loan_total_overflow: the total is kept');
exact('loan_total_overflow');

# ---------------------------------------------------------------- a payment dated infinity
$primary->safe_psql('postgres', q{INSERT INTO operational.payments (loan_id, amount, principal_portion,
	interest_portion, payment_method, payment_date) VALUES (3, 5, 5, 0, 'cash', 'infinity')});
is(run_etl(), 'success/incremental', 'payment_dated_infinity: run');
is($warehouse->safe_psql('postgres', q{SELECT reason FROM audit.etl_rejects ORDER BY reject_id DESC LIMIT 1}),
	'payment date is outside the calendar (2018-2050)', 'payment_dated_infinity: rejected with the reason');
exact('payment_dated_infinity');

# ---------------------------------------------------------------- text the warehouse encoding cannot hold
$primary->safe_psql('postgres', q{UPDATE operational.customers SET full_name = 'Zoë Wanjiru €-Trading ✓'
	WHERE customer_id = 4});
is(run_etl('latin1'), 'success/full', 'unencodable_text: a LATIN1 warehouse loads a name with € and ✓');
is($warehouse->safe_psql('latin1', q{SET client_encoding = 'UTF8'; SELECT convert_to(full_name, 'UTF8') = convert_to('Zoë Wanjiru ?-Trading ?', 'UTF8')
	FROM warehouse.dim_customer WHERE customer_id = 4 AND is_current}), 't',
	'unencodable_text: what LATIN1 can hold is kept, the rest is ?');
like($warehouse->safe_psql('latin1', q{SELECT reason FROM audit.etl_rejects WHERE table_name = 'customers'
	AND source_key = 4}), qr/cannot hold/, 'unencodable_text: the row is recorded in audit.etl_rejects');
is($warehouse->safe_psql('latin1', 'SELECT count(*) FROM eds_reconcile()'), '0',
	'unencodable_text: eds_reconcile() is clean');
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Kisumu' WHERE customer_id = 4});
is(run_etl('latin1'), 'success/incremental', 'unencodable_text: the next run goes on');
is($warehouse->safe_psql('latin1', q{SELECT count(*) FROM audit.etl_rejects WHERE table_name = 'customers'}), '2',
	'unencodable_text: recorded once per version of the row');

# ---------------------------------------------------------------- a forgotten prepared transaction
$primary->safe_psql('postgres', q{BEGIN; UPDATE operational.loans SET loan_officer = 'held' WHERE loan_id = 5;
	PREPARE TRANSACTION 'forgotten'});
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Nyeri' WHERE customer_id = 6});
is(run_etl(), 'success/incremental', 'prepared_transaction_stall: run while it is prepared');
like($warehouse->safe_psql('postgres', q{SELECT window_held_by || ' ' || changes_waiting FROM audit.etl_runs
	ORDER BY run_id DESC LIMIT 1}), qr/prepared transaction 'forgotten'.* true$/,
	'prepared_transaction_stall: the run row names it, and that changes wait');
sleep 2;
is(run_etl(), 'success/incremental', 'prepared_transaction_stall: another run');
like($warehouse->safe_psql('postgres', q{SELECT status || ': ' || message FROM eds_health() WHERE check_name = 'etl window'}),
	qr/^warn: The ETL window has not moved .*forgotten/, 'prepared_transaction_stall: eds_health() warns and names it');
$primary->safe_psql('postgres', q{COMMIT PREPARED 'forgotten'});
is(run_etl(), 'success/incremental', 'prepared_transaction_stall: run after it committed');
like($warehouse->safe_psql('postgres', q{SELECT status FROM eds_health() WHERE check_name = 'etl window'}),
	qr/^ok$/, 'prepared_transaction_stall: the window moves again');
exact('prepared_transaction_stall');

# ---------------------------------------------------------------- an idle session in a transaction
my $idle = $primary->background_psql('postgres');
$idle->query_safe(q{BEGIN; UPDATE operational.loans SET loan_officer = 'idle' WHERE loan_id = 7});
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Meru' WHERE customer_id = 8});
is(run_etl(), 'success/incremental', 'idle_in_transaction_stall: run');
like($warehouse->safe_psql('postgres', q{SELECT window_held_by FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/^session pid \d+ \(xid \d+\) of postgres in database postgres/,
	'idle_in_transaction_stall: the run row names the session (its state only for a pg_read_all_stats login)');
$idle->query_safe('COMMIT');
$idle->quit;
is(run_etl(), 'success/incremental', 'idle_in_transaction_stall: run after it committed');
exact('idle_in_transaction_stall');

# ---------------------------------------------------------------- the caller's statement_timeout
my $locker = $warehouse->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK warehouse.dim_customer IN ACCESS EXCLUSIVE MODE');
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Embu' WHERE customer_id = 9});
my ($rc, $out, $err) = $warehouse->psql('postgres', q{SET statement_timeout = '1s'; SELECT * FROM eds_run_etl()});
isnt($rc, 0, 'caller_statement_timeout: the call fails');
$locker->query_safe('ROLLBACK');
$locker->quit;
$warehouse->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM audit.etl_runs WHERE status = 'running'}) or die;
like($warehouse->safe_psql('postgres', q{SELECT error_message FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}),
	qr/caller of eds_run_etl\(\) stopped waiting \(canceling statement due to statement timeout\)/,
	'caller_statement_timeout: the run row gives the caller\'s reason');
is($warehouse->safe_psql('postgres', q{SELECT sqlstate FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1}), '57014',
	'caller_statement_timeout: with its SQLSTATE');
is(run_etl(), 'success/incremental', 'caller_statement_timeout: the next run loads the change');
exact('caller_statement_timeout');

# ---------------------------------------------------------------- a 1.0 source is refused
$primary->safe_psql('postgres', 'CREATE DATABASE old');
$primary->safe_psql('old', q{CREATE EXTENSION eds VERSION '1.0'});
$warehouse->safe_psql('postgres', 'CREATE DATABASE w_old');
$warehouse->safe_psql('w_old', 'CREATE EXTENSION eds');
set_source('w_old', $primary, 'old');
like(run_etl('w_old'), qr/the ETL source has eds 1.0, this warehouse needs 1.1/, 'source_version: 1.0 source refused');
like($warehouse->safe_psql('w_old', 'SELECT error_detail FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1'),
	qr/ALTER EXTENSION eds UPDATE/, 'source_version: the hint says what to do');
$primary->safe_psql('old', 'ALTER EXTENSION eds UPDATE');
is(run_etl('w_old'), 'success/full', 'source_version: after the update the run goes');

# ---------------------------------------------------------------- a warehouse that reads only a replica
$warehouse->safe_psql('postgres', 'CREATE DATABASE w_replica');
$warehouse->safe_psql('w_replica', 'CREATE EXTENSION eds');
set_source('w_replica', $replica);
like(run_etl('w_replica'), qr/the ETL source is a replica, and this warehouse is not a consumer of its primary/,
	'replica_not_consumer: refused while the primary does not know it');
like($warehouse->safe_psql('w_replica', 'SELECT error_detail FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1'),
	qr/eds_set_source_primary/, 'replica_not_consumer: the hint says how to declare the primary');
$warehouse->safe_psql('w_replica', sprintf("SELECT eds_set_source_primary('host=%s port=%d dbname=postgres user=etl password=%s')",
	$primary->host, $primary->port, $etl_password));
is(run_etl('w_replica'), 'success/full', 'replica_not_consumer: with the primary declared, the first load runs');
my $wid = $warehouse->safe_psql('w_replica', q{SELECT system_identifier || '/w_replica' FROM pg_control_system()});
ok($primary->poll_query_until('postgres', qq{SELECT watermark > '0'::xid8 FROM eds.etl_consumers WHERE consumer = '$wid'}),
	'replica_not_consumer: the primary records how far it has loaded');
my $replica_mark = $primary->safe_psql('postgres', qq{SELECT watermark FROM eds.etl_consumers WHERE consumer = '$wid'});
$primary->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Voi' WHERE customer_id = 12;
	DELETE FROM operational.payments WHERE payment_id = 20});
is(run_etl(), 'success/incremental', 'replica_not_consumer: the other warehouse loads from the primary');
is(run_etl(), 'success/incremental', 'replica_not_consumer: and acknowledges again');
$primary->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'eds_etl'});
ok($primary->safe_psql('postgres', qq{SELECT coalesce((SELECT purged_upto FROM eds.change_log_horizon), '0') <= '$replica_mark'::xid8}) eq 't',
	'replica_not_consumer: the primary does not purge past the replica reader');
$primary->wait_for_catchup($replica);
is(run_etl('w_replica'), 'success/incremental', 'replica_not_consumer: the replica reader loads the changes');
exact('replica_not_consumer', 'w_replica', $replica);

done_testing();
