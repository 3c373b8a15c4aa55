# ALTER EXTENSION eds UPDATE from the released 1.0 gives the same database
# as a fresh install of the current version: every object eds owns, with
# its definition, comment, grants and pg_dump registration.  Then a
# warehouse upgraded with data goes on loading from an upgraded source.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'\n");
$node->start;

my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'eds'});

$node->safe_psql('postgres', 'CREATE DATABASE fresh; CREATE DATABASE upgraded');
$node->safe_psql('fresh', 'CREATE EXTENSION eds');
$node->safe_psql('upgraded', q{CREATE EXTENSION eds VERSION '1.0'});
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'eds'}), '1.0',
	'the released 1.0 script installs');
# 1.0 with data in it: the operational tables (the library's ETL serves the
# current version only, so no 1.0 run can load a warehouse here).
$node->safe_psql('upgraded', 'SELECT count(*) FROM eds_generate_demo_data(20, 40, 200, 3)');
$node->safe_psql('upgraded', 'ALTER EXTENSION eds UPDATE');
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'eds'}), $current,
	"ALTER EXTENSION eds UPDATE reaches $current");

# Everything eds owns, one line per property, in a stable order.
my $catalog = q{
WITH members AS (
	SELECT d.classid, d.objid FROM pg_depend d
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'eds')
), rels AS (
	SELECT c.oid, c.relnamespace::regnamespace || '.' || c.relname AS name, c.relkind, c.relacl, c.reloptions
	  FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
)
SELECT line FROM (
	SELECT 'relation ' || name || ' kind ' || relkind::text || ' acl ' || coalesce(relacl::text, '-')
		   || ' options ' || coalesce(reloptions::text, '-') || ' comment ' || coalesce(obj_description(oid, 'pg_class'), '-') AS line
	  FROM rels
	UNION ALL
	SELECT 'column ' || r.name || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		   || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
		   || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
		   || coalesce(' generated ' || nullif(a.attgenerated::text, ''), '')
		   || ' comment ' || coalesce(col_description(r.oid, a.attnum), '-')
	  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT 'constraint ' || r.name || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
	  FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
	UNION ALL
	SELECT 'index ' || r.name || ' ' || regexp_replace(pg_get_indexdef(i.indexrelid), 'INDEX \S+ ON', 'INDEX ON')
	  FROM rels r JOIN pg_index i ON i.indrelid = r.oid
	UNION ALL
	SELECT 'trigger ' || r.name || ' ' || pg_get_triggerdef(t.oid)
	  FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
	UNION ALL
	SELECT 'view ' || r.name || ' ' || pg_get_viewdef(r.oid)
	  FROM rels r WHERE r.relkind = 'v'
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
		   || ' acl ' || coalesce(p.proacl::text, '-') || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
	  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	UNION ALL
	SELECT 'schema ' || n.nspname || ' acl ' || coalesce(n.nspacl::text, '-')
		   || ' comment ' || coalesce(obj_description(n.oid, 'pg_namespace'), '-')
	  FROM pg_namespace n JOIN members m ON m.classid = 'pg_namespace'::regclass AND m.objid = n.oid
	UNION ALL
	SELECT 'other member ' || pg_describe_object(m.classid, m.objid, 0)
	  FROM members m WHERE m.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_namespace'::regclass)
	UNION ALL
	SELECT 'dumped ' || c::regclass::text || ' ' || coalesce(f, '')
	  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(c, f) WHERE e.extname = 'eds'
) x ORDER BY line};

my $fresh = $node->safe_psql('fresh', $catalog);
my $upgraded = $node->safe_psql('upgraded', $catalog);
my @f = split /\n/, $fresh;
ok(@f > 300, 'the comparison sees the whole extension (' . scalar(@f) . ' lines)');
my %in_fresh = map { $_ => 1 } @f;
my %in_upgraded = map { $_ => 1 } split /\n/, $upgraded;
my @only_fresh = grep { !$in_upgraded{$_} } sort keys %in_fresh;
my @only_upgraded = grep { !$in_fresh{$_} } sort keys %in_upgraded;
is(scalar(@only_fresh) + scalar(@only_upgraded), 0, 'the upgraded catalog equals a fresh install')
  or diag(join("\n", (map { "only fresh:    $_" } @only_fresh[0 .. ($#only_fresh < 20 ? $#only_fresh : 20)]),
		(map { "only upgraded: $_" } @only_upgraded[0 .. ($#only_upgraded < 20 ? $#only_upgraded : 20)])));

# A warehouse on 1.0 is refused by the new library until it is upgraded.
$node->safe_psql('postgres', 'CREATE DATABASE wh');
$node->safe_psql('wh', q{CREATE EXTENSION eds VERSION '1.0';
	SELECT eds_set_source('host=} . $node->host . ' port=' . $node->port . q{ dbname=upgraded user=} .
	$ENV{USER} . q{')});
my ($rc, $out, $err) = $node->psql('wh', 'SELECT status FROM eds_run_etl()');
like($err, qr/eds in this database is version 1.0, its library is \Q$current\E.*\n.*ALTER EXTENSION eds UPDATE/s,
	'a 1.0 warehouse is refused with what to do');
$node->safe_psql('wh', 'ALTER EXTENSION eds UPDATE');
is($node->safe_psql('wh', 'SELECT status || \'/\' || mode FROM eds_run_etl()'), 'success/full',
	'after the update the warehouse loads the upgraded source');
$node->safe_psql('upgraded', q{UPDATE operational.customers SET city = 'Thika' WHERE customer_id = 1;
	DELETE FROM operational.payments WHERE payment_id = 3});
is($node->safe_psql('wh', 'SELECT status || \'/\' || mode FROM eds_run_etl()'), 'success/incremental',
	'and goes on incrementally');
is($node->safe_psql('wh', 'SELECT count(*) FROM eds_reconcile()'), '0', 'reconcile is clean');

done_testing();
