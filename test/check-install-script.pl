#!/usr/bin/perl
# Lint of the extension's SQL scripts (eds--*.sql), for the rules that keep
# CREATE EXTENSION safe (CVE-2022-2625, CVE-2023-39417) and SECURITY DEFINER
# functions uncapturable:
#   - no CREATE OR REPLACE and no CREATE ... IF NOT EXISTS on extension objects;
#   - every SECURITY DEFINER function sets search_path = pg_catalog, pg_temp;
#   - no @extschema@ inside a quoted string or a dollar-quoted body.
# Prints "install script: ok" or the problems, and exits non-zero.
use strict;
use warnings;

my @files = @ARGV ? @ARGV : glob('eds--*.sql');
die "no eds--*.sql script found\n" unless @files;
my @problems;

for my $file (@files) {
	open(my $fh, '<', $file) or die "cannot read $file: $!";
	my $sql = do { local $/; <$fh> };

	# Statements, roughly: split at semicolons outside dollar quotes.
	my @statements;
	my $current = '';
	my $dollar;
	for my $piece (split /(\$[A-Za-z_]*\$|;)/, $sql) {
		if (defined $dollar) {
			$dollar = undef if $piece eq $dollar;
			$current .= $piece;
		} elsif ($piece =~ /^\$[A-Za-z_]*\$$/) {
			$dollar = $piece;
			$current .= $piece;
		} elsif ($piece eq ';') {
			push @statements, $current;
			$current = '';
		} else {
			$current .= $piece;
		}
	}

	for my $st (@statements) {
		(my $code = $st) =~ s/--[^\n]*//g;	# drop comments
		(my $head = $code) =~ s/^\s+//;
		my ($first) = $head =~ /^([^\n]*)/;
		$first //= '';
		push @problems, "$file: CREATE OR REPLACE: $first" if $head =~ /^CREATE\s+OR\s+REPLACE\b/i;
		push @problems, "$file: CREATE ... IF NOT EXISTS: $first"
		  if $head =~ /^CREATE\b[^(]*?\bIF\s+NOT\s+EXISTS\b/i;
		if ($head =~ /^CREATE\s+FUNCTION\b/i && $code =~ /\bSECURITY\s+DEFINER\b/i) {
			push @problems, "$file: SECURITY DEFINER without SET search_path = pg_catalog, pg_temp: $first"
			  unless $code =~ /SET\s+search_path\s*=\s*pg_catalog\s*,\s*pg_temp\b/i;
		}
	}
	# @extschema@ inside single quotes or a dollar-quoted body (comments aside).
	$sql =~ s{/\*.*?\*/}{}gs;
	$sql =~ s/--[^\n]*//g;
	while ($sql =~ /(\$[A-Za-z_]*\$)(.*?)\1/gs) {
		push @problems, "$file: \@extschema\@ inside a dollar-quoted body" if $2 =~ /\@extschema\@/;
	}
	while ($sql =~ /'([^']*)'/g) {
		push @problems, "$file: \@extschema\@ inside a quoted string" if $1 =~ /\@extschema\@/;
	}
}

if (@problems) {
	print "install script: $_\n" for @problems;
	exit 1;
}
print "install script: ok\n";
