# Replication lag tracking and health with a primary and two streaming
# replicas: idle and caught up is ok (not lagging, not unknown); paused
# replay under writes goes warn then critical; a stopped replica is
# missing within two samples while its slot retains more and more WAL; it
# comes back; a promoted replica's worker starts sampling as a primary.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'eds'
eds.worker_database = 'postgres'
eds.lag_sample_interval = 1
eds.lag_warn_seconds = 3
eds.lag_critical_seconds = 8
eds.lag_warn_bytes = 1048576
eds.lag_critical_bytes = 268435456
});
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION eds;
	SELECT pg_create_physical_replication_slot('replica1_slot', true);
	SELECT pg_create_physical_replication_slot('replica2_slot', true);
});
$primary->backup('base');

my @replicas;
for my $n (1, 2)
{
	my $r = PostgreSQL::Test::Cluster->new("replica$n");
	$r->init_from_backup($primary, 'base', has_streaming => 1);
	$r->append_conf('postgresql.conf', "primary_slot_name = 'replica${n}_slot'");
	$r->start;
	push @replicas, $r;
}
my ($replica1, $replica2) = @replicas;

# The latest health status of one replica, as eds_health() reports it.
sub replica_status
{
	my ($name) = @_;
	return $primary->safe_psql('postgres',
		"SELECT status FROM eds_health() WHERE check_name = 'replica $name'");
}

# ---------------------------------------------------------------- idle
$primary->poll_query_until('postgres', q{
	SELECT count(*) = 2 FROM eds.vw_replication_lag_current
	 WHERE status = 'streaming' AND sampled_at > now() - interval '3 seconds'})
  or die 'replicas never sampled as streaming';
my $idle_start = $primary->safe_psql('postgres', 'SELECT now()');
sleep 6;
is(replica_status('replica1'), 'ok', 'idle replica1 is ok');
is(replica_status('replica2'), 'ok', 'idle replica2 is ok');
is($primary->safe_psql('postgres', qq{
	SELECT count(*) FROM eds.replication_lag_history
	 WHERE sampled_at > '$idle_start' AND (status <> 'streaming' OR heartbeat_lag IS NULL
		   OR heartbeat_lag > interval '3 seconds' OR replay_lag_bytes > 1048576)}), '0',
	'no sample during the idle period is lagging, unknown or missing');
ok($primary->safe_psql('postgres', qq{SELECT count(*) FROM eds.replication_lag_history WHERE sampled_at > '$idle_start'}) >= 8,
	'the worker sampled every second');
is($primary->safe_psql('postgres', q{SELECT string_agg(DISTINCT slot_name, ',' ORDER BY slot_name)
	FROM eds.replication_lag_history WHERE status = 'streaming'}), 'replica1_slot,replica2_slot',
	'each sample names the replica\'s slot');
is($replica1->safe_psql('postgres', q{SELECT status FROM eds_health() WHERE check_name = 'replayed heartbeat'}),
	'ok', 'on a standby, eds_health() sees the replayed heartbeat');

# ---------------------------------------------------------------- paused replay
$replica1->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$primary->safe_psql('postgres', q{CREATE TABLE ballast AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g});
my $t0 = time();
$primary->poll_query_until('postgres',
	q{SELECT status = 'warn' FROM eds_health() WHERE check_name = 'replica replica1'})
  or die 'paused replica never reached warn';
pass('paused replay: eds_health() warns');
$primary->poll_query_until('postgres',
	q{SELECT status = 'critical' FROM eds_health() WHERE check_name = 'replica replica1'})
  or die 'paused replica never reached critical';
pass('paused replay: eds_health() turns critical');
my ($bytes, $hb) = split /\|/, $primary->safe_psql('postgres', q{
	SELECT replay_lag_bytes, extract(epoch FROM heartbeat_lag) FROM eds.vw_replication_lag_current WHERE replica = 'replica1'});
ok($bytes > 1048576, "paused replay: byte lag grew ($bytes bytes)");
ok($hb >= 8, "paused replay: heartbeat lag grew ($hb s) although the replica still streams");
is(replica_status('replica2'), 'ok', 'the other replica stays ok');
like($primary->safe_psql('postgres', 'SELECT eds_metrics()'), qr/eds_health_status\{check="replica replica1"\} 2/,
	'eds_metrics() exports the critical state');
$replica1->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
$primary->poll_query_until('postgres',
	q{SELECT status = 'ok' FROM eds_health() WHERE check_name = 'replica replica1'})
  or die 'resumed replica never returned to ok';
pass('replay resumed: back to ok');

# ---------------------------------------------------------------- a replica stops
$replica2->stop('fast');
my $stopped_at = time();
$primary->poll_query_until('postgres', q{
	SELECT status = 'missing' FROM eds.vw_replication_lag_current WHERE replica = 'replica2'})
  or die 'stopped replica never shown as missing';
my $took = time() - $stopped_at;
ok($took < 3, sprintf('stopped replica2 shown as missing within two samples (%.1f s)', $took));
is(replica_status('replica2'), 'critical', 'a missing replica is critical');
my $retained1 = $primary->safe_psql('postgres',
	q{SELECT slot_retained_bytes FROM eds.vw_replication_lag_current WHERE replica = 'replica2'});
$primary->safe_psql('postgres', q{INSERT INTO ballast SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g});
sleep 2;
my ($retained2, $active) = split /\|/, $primary->safe_psql('postgres',
	q{SELECT slot_retained_bytes, slot_active FROM eds.vw_replication_lag_current WHERE replica = 'replica2'});
ok($retained2 > $retained1, "its inactive slot retains more and more WAL ($retained1 -> $retained2 bytes)");
is($active, 'f', 'its slot is inactive');
is($primary->safe_psql('postgres', q{SELECT status FROM eds_health() WHERE check_name = 'slot replica2_slot'}),
	'warn', 'the inactive slot is flagged');

$replica2->start;
$primary->poll_query_until('postgres',
	q{SELECT status = 'ok' FROM eds_health() WHERE check_name = 'replica replica2'})
  or die 'restarted replica never returned to ok';
pass('replica2 started again: back to ok');

# ---------------------------------------------------------------- promotion
$replica1->promote;
$replica1->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
my $promoted = $replica1->safe_psql('postgres', 'SELECT now()');
$replica1->poll_query_until('postgres', qq{SELECT count(*) > 0 FROM eds.heartbeat WHERE beat_at > '$promoted'})
  or die 'the promoted replica\'s worker never wrote a heartbeat';
pass('the worker on the promoted replica writes heartbeats as a primary');
is($replica1->safe_psql('postgres', q{SELECT value FROM eds_health() WHERE check_name = 'role'}), 'primary',
	'eds_health() on the promoted replica reports a primary');
ok($replica1->wait_for_log(qr/eds worker: this server is now a primary/), 'the worker logged the promotion');

# ---------------------------------------------------------------- settings reload
$primary->safe_psql('postgres', q{ALTER SYSTEM SET eds.expected_replicas = 'ghost'});
$primary->reload;
$primary->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM eds.replication_lag_history WHERE replica = 'ghost' AND status = 'missing'})
  or die 'the reloaded eds.expected_replicas never took effect';
pass('after a reload the worker expects the replica named in eds.expected_replicas, and reports it missing');
is($primary->safe_psql('postgres', q{SELECT status FROM eds_health() WHERE check_name = 'replica ghost'}),
	'critical', 'an expected replica that never connected is critical');

# ---------------------------------------------------------------- a worker whose database comes later
my $late = PostgreSQL::Test::Cluster->new('late');
$late->init;
$late->append_conf('postgresql.conf', q{
shared_preload_libraries = 'eds'
eds.worker_database = 'later_db'
eds.lag_sample_interval = 1
});
$late->start;
ok($late->wait_for_log(qr/eds worker: waiting for database "later_db" to be created/),
	'the worker waits for its database, and says so');
sleep 3;
my $waiting_lines = () = slurp_file($late->logfile) =~ /waiting for database/g;
is($waiting_lines, 1, 'it says so once, then waits quietly');
$late->safe_psql('postgres', 'CREATE DATABASE later_db');
$late->safe_psql('later_db', 'CREATE EXTENSION eds');
$late->poll_query_until('later_db', 'SELECT count(*) > 0 FROM eds.heartbeat')
  or die 'the worker never started on the new database';
pass('once the database and the extension exist, the worker samples there');

done_testing();
