// Java: allocation-heavy work that keeps the garbage collector busy (run with G1, the
// default, and with SerialGC), plus a pool of worker threads. java RtLoop DIR STEPS HOLD:
// reads DIR/seed at start, one line per step, waits for DIR/go at step HOLD, ends with a digest.
import java.nio.file.*;
import java.security.MessageDigest;
import java.util.*;
import java.util.concurrent.*;

public class RtLoop {
    public static void main(String[] a) throws Exception {
        Path dir = Paths.get(a[0]);
        int steps = Integer.parseInt(a[1]), hold = Integer.parseInt(a[2]);
        long s = Long.parseLong(Files.readString(dir.resolve("seed")).trim());
        ExecutorService pool = Executors.newFixedThreadPool(4);
        Map<Integer, byte[]> kept = new TreeMap<>();
        List<int[]> churn = new ArrayList<>();
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        for (int step = 1; step <= steps; step++) {
            if (step == hold) {
                long end = System.nanoTime() + 600_000_000_000L;
                while (!Files.exists(dir.resolve("go"))) {
                    if (System.nanoTime() > end) throw new RuntimeException("go never appeared");
                    Thread.sleep(5);
                }
            }
            final long base = s;
            List<Future<Long>> parts = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                final int id = t;
                parts.add(pool.submit(() -> {
                    long x = base + id;
                    for (int i = 0; i < 50000; i++) x = (x * 6364136223846793005L + 1442695040888963407L) ^ (x >>> 29);
                    return x;
                }));
            }
            for (Future<Long> f : parts) s = s * 31 + f.get();
            // Garbage: short-lived arrays, and some that live a while.
            for (int i = 0; i < 200; i++) churn.add(new int[1000 + (int) ((s >>> 7) & 1023)]);
            if (churn.size() > 3000) churn.subList(0, 2000).clear();
            byte[] d = md.digest(Long.toString(s).getBytes());
            kept.put(step, d);
            System.out.println("step " + step + " " + Long.toHexString(s) + " " + HexFormat.of().formatHex(d, 0, 8));
        }
        pool.shutdown();
        for (byte[] d : kept.values()) md.update(d);
        System.out.println("done " + steps + " " + HexFormat.of().formatHex(md.digest()));
    }
}
