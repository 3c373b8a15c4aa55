#!/usr/bin/perl
# Brings up the bin/eds-cluster topology in a temporary state dir on free
# ports and checks replication, security properties, idempotence and `down`.
#
# Run as a non-root user (e.g. postgres), from a directory that user can
# write (PostgreSQL::Test::Utils creates tmp_check/ there):
#   PERL5LIB=/usr/lib/postgresql/15/lib/pgxs/src/test/perl \
#   PATH=/usr/lib/postgresql/15/bin:$PATH prove -v t/001_topology.pl
use strict;
use warnings FATAL => 'all';

use Cwd qw(abs_path);
use Digest::MD5;
use FindBin;
use IO::Socket::INET;
use IPC::Run;
use Time::HiRes qw(usleep);

use PostgreSQL::Test::Utils;
use PostgreSQL::Test::Cluster;
use Test::More;

plan skip_all => 'run this test as a non-root user (PostgreSQL refuses root)'
  if $> == 0;

my $repo = abs_path("$FindBin::RealBin/..");
my $eds_cluster = "$repo/bin/eds-cluster";
my @nodes = qw(primary replica1 replica2 warehouse pgbouncer);
my @pg_nodes = qw(primary replica1 replica2 warehouse);
my %port_var = (
	primary => 'EDS_PRIMARY_PORT',
	replica1 => 'EDS_REPLICA1_PORT',
	replica2 => 'EDS_REPLICA2_PORT',
	warehouse => 'EDS_WAREHOUSE_PORT',
	pgbouncer => 'EDS_PGBOUNCER_PORT');

# tempdir() is relative to the cwd; the script makes EDS_HOME absolute too.
my $home = abs_path(PostgreSQL::Test::Utils::tempdir('eds'));
my %port = map { $_ => PostgreSQL::Test::Cluster::get_free_port() } @nodes;

$ENV{EDS_HOME} = $home;
$ENV{EDS_YES} = 1;
$ENV{$port_var{$_}} = $port{$_} for @nodes;

# Without an installed eds extension the servers would not even start
# (shared_preload_libraries), so build the topology without it then.
my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
chomp(my $sharedir = `$pg_config --sharedir`);
my $have_eds = -f "$sharedir/extension/eds.control";
if (!$have_eds)
{
	$ENV{EDS_NO_EXTENSION} = 1;
	note "eds extension not installed: using EDS_NO_EXTENSION=1";
}

my $psql = do { chomp(my $b = `$pg_config --bindir`); "$b/psql" };

# Run bin/eds-cluster; returns (exit code, stdout, stderr).
sub eds
{
	my @args = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $eds_cluster, @args ],
		'<' => \undef, '>' => \$out, '2>' => \$err,
		IPC::Run::timeout(600));
	my $rc = $? >> 8;
	note "bin/eds-cluster @args => exit $rc\n$out$err";
	return ($rc, $out, $err);
}

# Query a node through `bin/eds-cluster psql`; returns (exit code, out, err).
sub query
{
	my ($node, $sql) = @_;
	return eds('psql', $node, '-X', '-w', '-A', '-t', '-q',
		'-v', 'ON_ERROR_STOP=1', '-c', $sql);
}

# Plain psql with explicit connection settings (for negative auth tests).
sub raw_psql
{
	my ($port, $user, $db, $passfile) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGPASSFILE} = $passfile;
	IPC::Run::run(
		[
			$psql, '-X', '-w', '-h', '127.0.0.1', '-p', $port,
			'-U', $user, '-d', $db, '-Atc', 'select 1'
		],
		'<' => \undef, '>' => \$out, '2>' => \$err,
		IPC::Run::timeout(60));
	return ($? >> 8, $out, $err);
}

sub poll_until
{
	my ($node, $sql, $expected, $seconds) = @_;
	my $last = '';
	for (1 .. $seconds * 10)
	{
		my ($rc, $out) = query($node, $sql);
		chomp $out;
		return 1 if $rc == 0 && $out eq $expected;
		$last = $out;
		usleep(100_000);
	}
	diag "$node: '$sql' returned '$last', expected '$expected'";
	return 0;
}

sub slurp
{
	my ($file) = @_;
	open my $fh, '<', $file or die "open $file: $!";
	local $/;
	return scalar <$fh>;
}

sub file_mode { return (stat $_[0])[2] & 07777; }

sub server_pids
{
	my %pid;
	for my $n (@pg_nodes)
	{
		my $f = "$home/$n/postmaster.pid";
		$pid{$n} = -f $f ? (split /\n/, slurp($f))[0] : 'none';
	}
	my $f = "$home/pgbouncer/pgbouncer.pid";
	$pid{pgbouncer} = -f $f ? slurp($f) =~ s/\s+//gr : 'none';
	return \%pid;
}

sub config_files
{
	my @files = ("$home/pgbouncer/pgbouncer.ini");
	for my $n (@pg_nodes)
	{
		push @files, grep { -f }
		  map { "$home/$n/$_" } qw(postgresql.conf postgresql.auto.conf eds.conf pg_hba.conf);
	}
	return @files;
}

sub checksums
{
	my %sum;
	for my $f (config_files(), "$home/pgpass", "$home/pgbouncer/userlist.txt")
	{
		open my $fh, '<', $f or die "open $f: $!";
		$sum{$f} = Digest::MD5->new->addfile($fh)->hexdigest;
	}
	return \%sum;
}

sub port_is_free
{
	my ($port) = @_;
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => $port,
		Proto => 'tcp',
		Listen => 1,
		ReuseAddr => 1);
	return 0 unless $sock;
	close $sock;
	return 1;
}

# Whatever happens, leave no servers behind.
END
{
	my $exit = $?;
	if (-d $home)
	{
		IPC::Run::run([ $eds_cluster, 'down' ],
			'<' => \undef, '>' => \my $o, '2>' => \my $e,
			IPC::Run::timeout(300));
		# --purge also removes a socket dir that may live in /tmp.
		if (!defined $ENV{PG_TEST_NOCLEAN})
		{
			IPC::Run::run([ $eds_cluster, 'down', '--purge' ],
				'<' => \undef, '>' => \my $o2, '2>' => \my $e2,
				IPC::Run::timeout(300));
		}
	}
	$? = $exit;
}

# ---------------------------------------------------------------------------
# up

my ($rc, $out, $err) = eds('up');
is($rc, 0, 'up succeeds') or diag "$out\n$err";
BAIL_OUT('topology did not come up') if $rc != 0;

($rc, $out) = eds('status');
is($rc, 0, 'status exits 0 when everything runs');
for my $n (@nodes)
{
	like($out, qr/^\Q$n\E\s+\S+\s+\Q$port{$n}\E\s+running/m,
		"status shows $n running on its port");
}

# ---------------------------------------------------------------------------
# replication

($rc, $out) = query('primary',
	"SELECT r.application_name || ':' || r.state || ':' || s.slot_name
	   FROM pg_stat_replication r
	   JOIN pg_replication_slots s ON s.active_pid = r.pid
	  ORDER BY 1");
is($out, "replica1:streaming:replica1_slot\nreplica2:streaming:replica2_slot\n",
	'both replicas stream from the primary, each through its own slot');

($rc, $out) = query('primary',
	"SELECT slot_name || ':' || slot_type || ':' || active
	   FROM pg_replication_slots ORDER BY 1");
is($out, "replica1_slot:physical:true\nreplica2_slot:physical:true\n",
	'replica1_slot and replica2_slot are active physical slots');

($rc, $out) = query('primary', 'SHOW wal_level');
is($out, "logical\n", 'primary has wal_level=logical');

($rc) = query('primary',
	"DROP TABLE IF EXISTS eds_tap_scratch;
	 CREATE TABLE eds_tap_scratch (id int PRIMARY KEY, note text);
	 INSERT INTO eds_tap_scratch VALUES (1, 'written on primary');");
is($rc, 0, 'scratch table written on the primary');

for my $r (qw(replica1 replica2))
{
	ok( poll_until(
			$r, 'SELECT note FROM eds_tap_scratch WHERE id = 1',
			'written on primary', 60),
		"row written on the primary is visible on $r");

	($rc, $out, $err) =
	  query($r, "INSERT INTO eds_tap_scratch VALUES (2, 'on a replica')");
	isnt($rc, 0, "INSERT on $r fails");
	like($err, qr/cannot execute INSERT in a read-only transaction/,
		"$r is read-only");
}

($rc, $out) = query('pgbouncer', 'SELECT count(*) FROM eds_tap_scratch');
is($out, "1\n", 'pgbouncer reaches loans_db on the primary');

($rc, $out) = query('warehouse',
	"SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension
	  WHERE extname IN ('dblink', 'pg_cron', 'eds')");
is($out, ($have_eds ? 'dblink,eds,pg_cron' : 'dblink,pg_cron') . "\n",
	'warehouse_db has its extensions');

SKIP:
{
	skip 'eds extension not installed', 2 unless $have_eds;
	local $ENV{EDS_USER} = 'eds_app';
	($rc, $out) = query('pgbouncer',
		"SELECT current_user || ':' || pg_has_role('app_user', 'member')");
	is($out, "eds_app:true\n", 'eds_app logs in through pgbouncer, member of app_user');
	$ENV{EDS_USER} = 'eds_etl';
	($rc, $out) = query('primary',
		"SELECT current_user || ':' || pg_has_role('etl_reader', 'member')");
	is($out, "eds_etl:true\n", 'eds_etl logs in, member of etl_reader');
}

# ---------------------------------------------------------------------------
# security

is(sprintf('%04o', file_mode("$home/pgpass")), '0600', 'pgpass is 0600');
is(sprintf('%04o', file_mode("$home/secrets")), '0700', 'secrets/ is 0700');
my @secrets = glob("$home/secrets/*");
is(scalar(@secrets), 5, 'one secret per role');
is(sprintf('%04o', file_mode($_)), '0600', "$_ is 0600") for @secrets;
is(sprintf('%04o', file_mode("$home/pgbouncer/userlist.txt")),
	'0600', 'pgbouncer userlist is 0600');

my @passwords = map { my $p = slurp($_); chomp $p; $p } @secrets;
ok(!(grep { length($_) < 16 } @passwords), 'passwords are long enough');
my @leaks;
for my $f (config_files(), glob("$home/log/*.log"), "$home/pgbouncer/pgbouncer.log")
{
	next unless -f $f;
	my $text = slurp($f);
	push @leaks, $f if grep { index($text, $_) >= 0 } @passwords;
	push @leaks, "$f (password=)" if $text =~ /password=/i;
}
is_deeply(\@leaks, [], 'no password in any config or log file');
like(slurp("$home/replica1/postgresql.auto.conf"),
	qr/^primary_conninfo = '[^']*passfile=\Q$home\E\/pgpass[^']*application_name=replica1/m,
	'replica primary_conninfo uses the pgpass file');

my $bad_pgpass = "$home/bad_pgpass";
{
	open my $fh, '>', $bad_pgpass or die $!;
	print $fh "*:*:*:*:definitely-not-the-password\n";
	close $fh;
	chmod 0600, $bad_pgpass;
}
for my $n (qw(primary warehouse pgbouncer))
{
	my $db = $n eq 'warehouse' ? 'warehouse_db' : 'loans_db';
	($rc, $out, $err) = raw_psql($port{$n}, 'postgres', $db, $bad_pgpass);
	isnt($rc, 0, "$n: wrong password over TCP is refused");
	like($err, qr/password authentication failed|SASL authentication failed/,
		"$n: refusal is an authentication failure");
}
($rc, $out, $err) = raw_psql($port{primary}, 'postgres', 'loans_db', '/dev/null');
isnt($rc, 0, 'no password at all is refused');

($rc, $out, $err) =
  raw_psql($port{primary}, 'replicator', 'loans_db', "$home/pgpass");
isnt($rc, 0, 'replicator cannot open a normal session');
like($err, qr/pg_hba\.conf rejects connection/, '... rejected by pg_hba.conf');

# ---------------------------------------------------------------------------
# idempotence

my $pids_before = server_pids();
my $sums_before = checksums();
($rc, $out, $err) = eds('up');
is($rc, 0, 'second up succeeds');
unlike($out, qr/^==> /m, 'second up has nothing to do');
is_deeply(server_pids(), $pids_before, 'second up restarts nothing');
is_deeply(checksums(), $sums_before, 'second up rewrites no file');

# ---------------------------------------------------------------------------
# backups (bin/eds-backup), with data moved by the ETL

if ($have_eds)
{
	my $backup = "$repo/bin/eds-backup";
	sub backup_cmd
	{
		my ($o, $e) = ('', '');
		IPC::Run::run([ $backup, @_ ], '<' => \undef, '>' => \$o, '2>' => \$e, IPC::Run::timeout(600));
		note "bin/eds-backup @_ => exit " . ($? >> 8) . "\n$o$e";
		return ($? >> 8, $o, $e);
	}
	($rc, $out, $err) = query('primary', 'SELECT count(*) FROM eds_generate_demo_data(20, 30, 120, 5)');
	is($rc, 0, 'demo data loaded on the primary');
	($rc, $out, $err) = query('warehouse', 'SELECT status FROM eds_run_etl()');
	is($out, "success\n", 'the warehouse ETL, wired by up, loads from the primary as eds_etl');

	($rc, $out, $err) = backup_cmd('backup', 'all');
	is($rc, 0, 'eds-backup backup all');
	my @files = split /\n/, $out;
	is(scalar(@files), 2, 'one dump per database');
	is(sprintf('%04o', file_mode($_)), '0600', "$_ is 0600") for @files;
	my ($op_file) = grep { m{/operational-} } @files;
	my ($wh_file) = grep { m{/warehouse-} } @files;

	($rc, $out, $err) = backup_cmd('restore', $op_file, 'loans_db_copy');
	is($rc, 0, 'the operational backup restores into a new database') or diag $err;
	my ($r1, $src) = query('primary', 'SELECT count(*) || \'/\' || sum(amount) FROM operational.payments');
	my ($r2, $copy) = eds('psql', 'primary', '-X', '-w', '-A', '-t', '-q', '-d', 'loans_db_copy', '-c',
		'SELECT count(*) || \'/\' || sum(amount) FROM operational.payments');
	is($copy, $src, 'the restored copy has every payment');

	($rc, $out, $err) = backup_cmd('restore', $wh_file, 'warehouse_copy');
	is($rc, 0, 'the warehouse backup restores into a new database (without pg_cron)') or diag $err;
	my ($r3, $wsrc) = query('warehouse', 'SELECT count(*) || \'/\' || sum(payment_amount) FROM warehouse.fact_payments');
	my ($r4, $wcopy) = eds('psql', 'warehouse', '-X', '-w', '-A', '-t', '-q', '-d', 'warehouse_copy', '-c',
		'SELECT count(*) || \'/\' || sum(payment_amount) FROM warehouse.fact_payments');
	is($wcopy, $wsrc, 'the restored warehouse has every fact');

	($rc, $out, $err) = backup_cmd('restore', $op_file, 'loans_db_copy');
	isnt($rc, 0, 'a restore never overwrites an existing database');
	like($err, qr/already exists/, '... and says so');

	($rc, $out, $err) = backup_cmd('health');
	is($rc, 0, 'eds-backup health');
	like($out, qr/wal archiving/, 'health shows the archiving check');
}

# ---------------------------------------------------------------------------
# down

($rc, $out, $err) = eds('down');
is($rc, 0, 'down succeeds');
($rc, $out) = eds('status');
is($rc, 1, 'status exits 1 when stopped');
unlike($out, qr/running/, 'status shows nothing running');
ok(port_is_free($port{$_}), "port of $_ is free after down") for @nodes;
ok(!-e "$home/$_/postmaster.pid", "$_ has no postmaster.pid") for @pg_nodes;
($rc) = eds('down');
is($rc, 0, 'down again is a no-op');

done_testing();
