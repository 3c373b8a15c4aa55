# The audit trail names the right actor behind PgBouncer transaction pooling.
#
# Many clients share one server connection, so session_user is the pool's
# login and a session-level SET leaks to whoever gets the connection next.
# eds's rule: the app says who acts with SET LOCAL eds.actor, per transaction.
use strict;
use warnings FATAL => 'all';

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# pgbouncer is installed by bin/eds-bootstrap; its absence is a failure.
my ($pgbouncer) = grep { -x $_ } map { "$_/pgbouncer" } (split(/:/, $ENV{PATH}), '/usr/sbin');
die 'pgbouncer is not installed: run bin/eds-bootstrap' unless $pgbouncer;

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'eds'");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION eds;
	CREATE ROLE teller LOGIN IN ROLE app_user;
	SELECT count(*) FROM eds_generate_demo_data(5, 5, 20);
});
my $loan = $node->safe_psql('postgres',
	"SELECT loan_id FROM operational.loans WHERE status = 'active' ORDER BY outstanding_balance DESC LIMIT 1");

# One pooled server connection: every client transaction runs on it.
my $dir = PostgreSQL::Test::Utils::tempdir();
my $bport = PostgreSQL::Test::Cluster::get_free_port();
my $host = $node->host;
my $nport = $node->port;
open(my $fh, '>', "$dir/userlist.txt") or die;
print $fh qq{"teller" ""\n};
close $fh;
open($fh, '>', "$dir/pgbouncer.ini") or die;
print $fh <<"INI";
[databases]
postgres = host=$host port=$nport dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 10
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
close $fh;
IPC::Run::run([ $pgbouncer, '-d', "$dir/pgbouncer.ini" ])
  or die "pgbouncer did not start: see $dir/pgbouncer.log";

END { kill 'TERM', `cat $dir/pgbouncer.pid` if $dir && -f "$dir/pgbouncer.pid"; }

# Run SQL as one client connection through the pooler.
sub via_pgbouncer
{
	my ($sql) = @_;
	my ($out, $err);
	IPC::Run::run(
		[
			'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1',
			'-d', "host=127.0.0.1 port=$bport dbname=postgres user=teller",
			'-c', $sql
		],
		'>', \$out, '2>', \$err) or die "psql through pgbouncer failed: $err";
	chomp $out;
	return $out;
}

# Poll until pgbouncer accepts connections.
my $ready = 0;
for (1 .. 50)
{
	my ($out, $err);
	if (IPC::Run::run(['psql', '-X', '-qAt', '-d',
			"host=127.0.0.1 port=$bport dbname=postgres user=teller",
			'-c', 'SELECT 1'], '>', \$out, '2>', \$err))
	{
		$ready = 1;
		last;
	}
	sleep 0.1;
}
ok($ready, 'pgbouncer accepts connections');

# Client 1 posts a payment as teller alice, client 2 as bob, client 3 says
# nothing: each gets its own actor although all share one server backend.
my $pid1 = via_pgbouncer(qq{BEGIN; SET LOCAL eds.actor = 'alice';
	SELECT payment_id FROM operational.post_payment($loan, 10, 'mpesa');
	SELECT pg_backend_pid(); COMMIT;});
my $pid2 = via_pgbouncer(qq{BEGIN; SET LOCAL eds.actor = 'bob';
	SELECT payment_id FROM operational.post_payment($loan, 10, 'cash');
	SELECT pg_backend_pid(); COMMIT;});
my $pid3 = via_pgbouncer(qq{BEGIN;
	SELECT payment_id FROM operational.post_payment($loan, 10, 'online');
	SELECT pg_backend_pid(); COMMIT;});
($pid1) = reverse split /\n/, $pid1;
($pid2) = reverse split /\n/, $pid2;
($pid3) = reverse split /\n/, $pid3;
is($pid2, $pid1, 'clients 1 and 2 ran on the same pooled server backend');
is($pid3, $pid1, 'client 3 ran on the same pooled server backend');

my $actors = $node->safe_psql('postgres', qq{
	SELECT string_agg(actor || '/' || db_user, ',' ORDER BY log_id)
	  FROM operational.audit_log
	 WHERE table_name = 'loans' AND operation = 'UPDATE' AND record_id = '$loan'});
is($actors, 'alice/teller,bob/teller,teller/teller',
	'SET LOCAL eds.actor gives each transaction its own actor, then falls back to session_user');

# The pitfall eds documents: a session-level SET stays on the pooled server
# connection and is inherited by the next client.
via_pgbouncer(q{SET eds.actor = 'mallory'});
via_pgbouncer(qq{SELECT payment_id FROM operational.post_payment($loan, 10, 'cash')});
my $leaked = $node->safe_psql('postgres', qq{
	SELECT actor FROM operational.audit_log
	 WHERE table_name = 'loans' AND record_id = '$loan' ORDER BY log_id DESC LIMIT 1});
is($leaked, 'mallory', 'a session-level SET leaks across pooled clients (why eds requires SET LOCAL)');

done_testing();
