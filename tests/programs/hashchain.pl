# A hash chain that prints its progress: hashchain.pl STEPS ROUNDS DELAY_S HOLD_STEP GOFILE
# At step HOLD_STEP (0: never) it waits until GOFILE exists, so a test can act mid-run.
use strict;
use warnings;
use Digest::SHA qw(sha256);

my ($steps, $rounds, $delay, $hold, $go) = @ARGV;
$| = 1;
my $h = "forkpoint";
my %seen;
my @history;
for my $step (1 .. $steps) {
    if ($step == $hold) {
        for (1 .. 600000) {
            last if -e $go;
            select(undef, undef, undef, 0.001);
        }
    }
    $h = sha256($h) for 1 .. $rounds;
    $seen{substr($h, 0, 3)} = $step;
    push @history, unpack("N", $h) % 1000003;
    my $sum = 0;
    $sum = ($sum + $_) % 1000003 for @history;
    printf "step %d %s %d %d\n", $step, unpack("H*", $h), scalar(keys %seen), $sum;
    select(undef, undef, undef, $delay);
}
my $all = join(",", map { "$_=$seen{$_}" } sort keys %seen);
printf "done %d %s\n", $steps, unpack("H*", sha256($all));
