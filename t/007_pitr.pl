# Point-in-time recovery of the primary from its WAL archive, then an ETL
# run from the recovered server into a fresh warehouse: the recovered data is
# exactly the state at the target time, and the warehouse reconciles clean.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(has_archiving => 1, allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION eds;
	SELECT count(*) FROM eds_generate_demo_data(100, 150, 1000, 21);
});
$primary->backup('base');

# Good work after the backup, then the moment to recover to, then a mistake.
$primary->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT operational.post_payment(loan_id, 3.00, 'mpesa', p_reference => 'AFTER-BACKUP')
		FROM operational.loans WHERE status = 'active' AND outstanding_balance > 100 LIMIT 20) p});
my $good = $primary->safe_psql('postgres', q{
	SELECT count(*) || '/' || sum(amount) FROM operational.payments});
sleep 1;
my $target = $primary->safe_psql('postgres', 'SELECT now()');
sleep 1;
$primary->safe_psql('postgres', q{
	DELETE FROM operational.payments WHERE reference = 'AFTER-BACKUP';
	UPDATE operational.loans SET status = 'defaulted' WHERE status = 'active'});
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->poll_query_until('postgres',
	q{SELECT last_archived_wal IS NOT NULL AND last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1)
	    FROM pg_stat_archiver}) or die 'WAL not archived';

# Recover a copy of the primary to the target time.
my $recovered = PostgreSQL::Test::Cluster->new('recovered');
$recovered->init_from_backup($primary, 'base', has_restoring => 1);
$recovered->append_conf('postgresql.conf', qq{
recovery_target_time = '$target'
recovery_target_action = 'promote'
});
$recovered->start;
$recovered->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'recovery did not finish';

is($recovered->safe_psql('postgres', q{SELECT count(*) || '/' || sum(amount) FROM operational.payments}),
	$good, 'the recovered primary has the payments made before the target time');
is($recovered->safe_psql('postgres', q{SELECT count(*) FROM operational.payments WHERE reference = 'AFTER-BACKUP'}),
	'20', 'the work after the backup was replayed from the archive');
ok($recovered->safe_psql('postgres', q{SELECT count(*) FROM operational.loans WHERE status = 'active'}) > 0,
	'the mistake after the target time is not there');
is($recovered->safe_psql('postgres', q{SELECT count(*) FROM operational.audit_log WHERE operation = 'UPDATE'
	AND new_values->>'status' = 'defaulted' AND old_values->>'status' = 'active'}), '0',
	'nor is it in the audit trail');

# A fresh warehouse loads from the recovered server and reconciles clean.
my $warehouse = PostgreSQL::Test::Cluster->new('warehouse');
$warehouse->init;
$warehouse->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'");
$warehouse->start;
my ($host, $port) = ($recovered->host, $recovered->port);
$warehouse->safe_psql('postgres', qq{
	CREATE EXTENSION eds;
	SELECT eds_set_source('host=$host port=$port dbname=postgres')});
is($warehouse->safe_psql('postgres', 'SELECT status FROM eds_run_etl()'), 'success', 'ETL from the recovered primary');
is($warehouse->safe_psql('postgres', 'SELECT count(*) FROM eds_reconcile()'), '0', 'the warehouse reconciles clean');
is($warehouse->safe_psql('postgres', q{SELECT count(*) || '/' || sum(payment_amount) FROM warehouse.fact_payments}),
	$good, 'independent check: payment count and sum equal the recovered source');

done_testing();
