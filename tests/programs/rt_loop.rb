# Ruby: objects, strings and a hash that grow, a second Ruby thread (the VM's timer thread
# runs too) and the garbage collector. rt_loop.rb DIR STEPS HOLD: reads DIR/seed at start,
# one line per step, waits for DIR/go at step HOLD, ends with a digest.
require 'digest'
$stdout.sync = true
dir, steps, hold = ARGV[0], ARGV[1].to_i, ARGV[2].to_i
h = Digest::SHA256.digest(File.read("#{dir}/seed").strip)
kept = {}
queue = Queue.new
results = Queue.new
helper = Thread.new do
  while (job = queue.pop)
    x = job
    300.times { x = Digest::SHA256.digest(x) }
    results << x
  end
end
(1..steps).each do |step|
  if step == hold
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 600
    until File.exist?("#{dir}/go")
      raise 'go never appeared' if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.005
    end
  end
  queue << h
  h = results.pop
  kept[step] = { hex: h.unpack1('H*'), words: Array.new(32) { |i| "w#{i}-#{step}" } }
  total = kept.values.sum { |v| v[:hex][0, 6].to_i(16) } % 1_000_003
  puts "step #{step} #{kept[step][:hex][0, 16]} #{total}"
end
queue << nil
helper.join
puts "done #{steps} #{Digest::SHA256.hexdigest(kept.map { |k, v| "#{k}:#{v[:hex]}:#{v[:words].join}" }.join)}"
