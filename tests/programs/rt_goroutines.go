// Go: a goroutine-heavy program. The Go runtime runs many threads, preempts goroutines with
// SIGURG, gives each thread its own signal stack and collects garbage concurrently: a classic
// breakage for checkpointers. rt_goroutines DIR STEPS HOLD: reads DIR/seed at start, one line
// per step (256 goroutines hash in parallel and a channel pipeline combines them in order),
// waits for DIR/go at step HOLD, ends with a digest of everything it kept.
//
// Built with cgo (`import "C"`): a pure-Go binary is linked statically, so LD_PRELOAD never
// loads the library into it. With cgo the runtime starts its threads with pthread_create and
// installs its signal handlers through libc's sigaction, as in most Go programs that link C.
package main

import "C"

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	dir := os.Args[1]
	steps, _ := strconv.Atoi(os.Args[2])
	hold, _ := strconv.Atoi(os.Args[3])
	raw, err := os.ReadFile(dir + "/seed")
	if err != nil {
		panic(err)
	}
	seed, _ := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	state := sha256.Sum256([]byte(strconv.FormatUint(seed, 10)))
	kept := make(map[int][]byte)
	var garbage [][]byte
	for step := 1; step <= steps; step++ {
		if step == hold {
			end := time.Now().Add(600 * time.Second)
			for {
				if _, err := os.Stat(dir + "/go"); err == nil {
					break
				}
				if time.Now().After(end) {
					panic("go never appeared")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		const workers = 256
		results := make([][32]byte, workers)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				h := state
				binary.LittleEndian.PutUint32(h[:4], uint32(w))
				for i := 0; i < 200; i++ {
					h = sha256.Sum256(h[:])
				}
				results[w] = h
			}(w)
		}
		wg.Wait()
		// A pipeline of goroutines joined by channels folds the results in order.
		in := make(chan [32]byte)
		mid := make(chan [32]byte)
		go func() {
			for _, r := range results {
				in <- r
			}
			close(in)
		}()
		go func() {
			for r := range in {
				mid <- sha256.Sum256(r[:])
			}
			close(mid)
		}()
		acc := sha256.New()
		for r := range mid {
			acc.Write(r[:])
		}
		copy(state[:], acc.Sum(nil))
		kept[step] = append([]byte(nil), state[:]...)
		garbage = append(garbage, make([]byte, 64<<10))
		if len(garbage) > 64 {
			garbage = garbage[32:]
		}
		fmt.Printf("step %d %x %d\n", step, state[:8], len(kept))
	}
	final := sha256.New()
	for step := 1; step <= steps; step++ {
		final.Write(kept[step])
	}
	fmt.Printf("done %d %x\n", steps, final.Sum(nil))
}
