# pg_dump keeps the rows of eds's tables (pg_extension_config_dump) and the
# positions of their sequences, so a restored database carries on where the
# original stopped.  CREATE EXTENSION runs before the data is loaded, so the
# restore runs with session_replication_role = replica (the documented way):
# otherwise the audit trigger would record every restored loan as a new
# INSERT, and collide with the restored audit rows.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION eds;
	SELECT count(*) FROM eds_generate_demo_data(200, 300, 2000, 11);
	SELECT count(*) FROM operational.post_payment(
		(SELECT loan_id FROM operational.loans WHERE status = 'active'
		  ORDER BY outstanding_balance DESC LIMIT 1), 50, 'cash');
});

# Counts, money and the audit trail, computed independently of eds.
my $fingerprint = q{
	SELECT (SELECT count(*) FROM operational.customers) || '/' ||
		   (SELECT count(*) FROM operational.loans) || '/' ||
		   (SELECT count(*) FROM operational.payments) || '/' ||
		   (SELECT sum(amount) FROM operational.payments) || '/' ||
		   (SELECT sum(outstanding_balance) FROM operational.loans) || '/' ||
		   (SELECT count(*) FROM operational.audit_log) || '/' ||
		   (SELECT count(*) FROM operational.loan_products)
};
my $before = $node->safe_psql('postgres', $fingerprint);

my $dump = $node->basedir . '/eds.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ],
	'pg_dump of a database with eds');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	$node->command_ok(
		[ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
		'pg_restore (session_replication_role=replica) into a new database');
}

is($node->safe_psql('restored', $fingerprint), $before,
	'restored rows: customers, loans, payments, money, audit trail, products');

# New rows continue after the restored ones, and the audit trigger works.
my $next = $node->safe_psql('restored', q{
	SELECT payment_id > 2001 FROM operational.post_payment(
		(SELECT loan_id FROM operational.loans WHERE status = 'active'
		  ORDER BY outstanding_balance DESC LIMIT 1), 50, 'mpesa')});
is($next, 't', 'payment ids continue after the restored ones');
is($node->safe_psql('restored',
		"SELECT max(log_id) > 300 AND count(*) = 302 FROM operational.audit_log"),
	't', 'audit trail continues after the restored rows');

# ---------------------------------------------------------------- the warehouse side
# The same database as warehouse of itself: the star schema, its monthly
# partitions (ordinary tables the ETL created), the SCD2 history, the run
# history and the watermark must all survive a dump and restore.
my ($host, $port) = ($node->host, $node->port);
$node->safe_psql('postgres', qq{SELECT eds_set_source('host=$host port=$port dbname=postgres')});
is($node->safe_psql('postgres', 'SELECT status FROM eds_run_etl()'), 'success', 'warehouse loaded');
$node->safe_psql('postgres', q{UPDATE operational.customers SET city = 'Lamu' WHERE customer_id % 7 = 0});
is($node->safe_psql('postgres', 'SELECT status FROM eds_run_etl()'), 'success', 'SCD2 versions made');

my $star = q{
	SELECT (SELECT count(*) FROM warehouse.fact_payments) || '/' ||
		   (SELECT sum(payment_amount) FROM warehouse.fact_payments) || '/' ||
		   (SELECT count(*) FROM warehouse.dim_customer) || '/' ||
		   (SELECT count(*) FROM warehouse.dim_customer WHERE version_no > 1) || '/' ||
		   (SELECT count(*) FROM warehouse.fact_loans) || '/' ||
		   (SELECT sum(total_paid) FROM warehouse.fact_loans) || '/' ||
		   (SELECT count(*) FROM audit.etl_runs) || '/' ||
		   (SELECT watermark FROM audit.etl_state)
};
my $star_before = $node->safe_psql('postgres', $star);
my $wdump = $node->basedir . '/warehouse.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $wdump ],
	'pg_dump of the warehouse');
$node->safe_psql('postgres', 'CREATE DATABASE warehouse_copy');
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	$node->command_ok(
		[ 'pg_restore', '--exit-on-error', '-d', $node->connstr('warehouse_copy'), $wdump ],
		'pg_restore of the warehouse, partitions included, without a single error');
}
is($node->safe_psql('warehouse_copy', $star), $star_before,
	'restored: facts, money, SCD2 versions, fact_loans totals, run history, watermark');
is($node->safe_psql('warehouse_copy', q{SELECT status || '/' || mode || '/' || rows_read FROM eds_run_etl()}),
	'success/incremental/0', 'the restored warehouse carries on from its watermark');

done_testing();
