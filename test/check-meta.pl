#!/usr/bin/perl
# Checks META.json against the PGXN Meta Spec 1.0.0 (the fields PGXN
# requires, their types and formats) and that its versions are
# eds.control's.  Prints "meta: ok" or the problems, and exits non-zero.
use strict;
use warnings;
use JSON::PP;

my ($meta_file, $control_file) = @ARGV;
$meta_file    //= 'META.json';
$control_file //= 'eds.control';

open(my $fh, '<', $meta_file) or die "cannot read $meta_file: $!";
my $meta = eval { decode_json(do { local $/; <$fh> }) };
die "$meta_file is not valid JSON: $@" unless $meta;

open($fh, '<', $control_file) or die "cannot read $control_file: $!";
my ($control_version) = map { /^default_version\s*=\s*'([^']+)'/ ? $1 : () } <$fh>;
die "no default_version in $control_file" unless $control_version;

my @problems;
my $semver = qr/^\d+\.\d+\.\d+(?:-[0-9A-Za-z-]+)?$/;
my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd gfdl_1_2
  gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1 openssl perl_5 postgresql
  qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);

for my $field (qw(name abstract maintainer license provides meta-spec version)) {
	push @problems, "required field '$field' is missing" unless exists $meta->{$field};
}
push @problems, "name must be a string without spaces" if ($meta->{name} // '') !~ /^[A-Za-z0-9_-]+$/;
push @problems, "version '$meta->{version}' is not semver" if ($meta->{version} // '') !~ $semver;
push @problems, "meta-spec version must be 1.0.0"
  unless ref $meta->{'meta-spec'} eq 'HASH' && ($meta->{'meta-spec'}{version} // '') eq '1.0.0';
my @maint = ref $meta->{maintainer} eq 'ARRAY' ? @{ $meta->{maintainer} } : ($meta->{maintainer} // ());
push @problems, "maintainer must name someone" unless @maint && !grep { !defined || $_ eq '' } @maint;
my @lic = ref $meta->{license} eq 'ARRAY' ? @{ $meta->{license} } :
  ref $meta->{license} eq 'HASH' ? () : ($meta->{license} // ());
push @problems, "unknown license '$_'" for grep { !$licenses{$_} } @lic;
if (ref $meta->{provides} eq 'HASH' && %{ $meta->{provides} }) {
	for my $ext (sort keys %{ $meta->{provides} }) {
		my $p = $meta->{provides}{$ext};
		push @problems, "provides.$ext.file is missing or does not exist" unless $p->{file} && -f $p->{file};
		push @problems, "provides.$ext.version '" . ($p->{version} // '') . "' is not semver"
		  if ($p->{version} // '') !~ $semver;
	}
} else {
	push @problems, "provides must list at least one extension";
}
if (exists $meta->{prereqs}) {
	for my $phase (keys %{ $meta->{prereqs} }) {
		push @problems, "prereqs phase '$phase' is not one of configure, build, test, runtime, develop"
		  unless $phase =~ /^(configure|build|test|runtime|develop)$/;
	}
}

# The release version follows eds.control (1.0 is 1.0.0).
for my $v ($meta->{version}, map { $_->{version} } values %{ $meta->{provides} // {} }) {
	next unless defined $v;
	push @problems, "version $v does not match eds.control's $control_version"
	  unless $v eq $control_version || $v eq "$control_version.0";
}

if (@problems) {
	print "meta: $_\n" for @problems;
	exit 1;
}
print "meta: ok\n";
