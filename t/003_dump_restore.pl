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

done_testing();
