# The analyst's side through the PostgreSQL JDBC driver, the driver Metabase
# uses: as a member of warehouse_reader, list the warehouse relations and
# columns with their comments through DatabaseMetaData, be refused
# everything else, and run every dashboard card's query.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(getcwd);

my $jar = '/usr/share/java/postgresql.jar';
die "the PostgreSQL JDBC driver is missing ($jar): run bin/eds-bootstrap" unless -f $jar;

my $node = PostgreSQL::Test::Cluster->new('warehouse');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'eds'
listen_addresses = '127.0.0.1'
});
my $hba = $node->data_dir . '/pg_hba.conf';
open(my $fh, '>>', $hba) or die;
print $fh "host all all 127.0.0.1/32 scram-sha-256\n";
close $fh;
$node->start;

# This database is source and warehouse at once; a lag sample and a run
# fill the star schema and the lag views.
my $password = 'mb-' . int(rand(1_000_000_000));
my ($host, $port) = ($node->host, $node->port);
$node->safe_psql('postgres', qq{
	CREATE EXTENSION eds;
	SELECT count(*) FROM eds_generate_demo_data(50, 80, 400, 11);
	SELECT eds_set_source('host=$host port=$port dbname=postgres');
	CREATE ROLE metabase LOGIN PASSWORD '$password' IN ROLE warehouse_reader;
});
# A replica-less server samples nothing; record one as a replica would be.
$node->safe_psql('postgres', q{
	INSERT INTO eds.replication_lag_history (sampled_at, replica, status, replay_lag_bytes, heartbeat_lag)
	VALUES (now(), 'replica1', 'streaming', 0, '1 second')});
is($node->safe_psql('postgres', 'SELECT status FROM eds_run_etl()'), 'success', 'the ETL filled the warehouse');

my $url = sprintf('jdbc:postgresql://127.0.0.1:%d/postgres', $node->port);
my ($stdout, $stderr);
my $cards = getcwd() . '/docker/metabase/cards.sql';
IPC::Run::run(
	[ 'java', '-cp', $jar, getcwd() . '/test/jdbc/WarehouseCatalog.java', $url, 'metabase', $password, $cards ],
	'>', \$stdout, '2>', \$stderr);
note $stderr if $stderr;
my $checks = 0;
for my $line (split /\n/, $stdout)
{
	if ($line =~ /^(not )?ok - (.*)$/)
	{
		ok(!defined $1, "JDBC: $2");
		$checks++;
	}
}
ok($checks > 30, "the JDBC program ran its checks ($checks)");

done_testing();
