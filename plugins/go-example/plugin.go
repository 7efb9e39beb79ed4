// A billiard-host plugin in Go: the example of README's "Write a plugin in
// Go". It is a cgo package built with `go build -buildmode=c-shared`
// (`make` gives libgo_example.so); desc.c holds the descriptor, this file
// the `call` entry, exported to C as billiard_go_call. Only the standard
// library: it builds offline.
//
//	billiard-host inspect libgo_example.so
//	billiard-host run libgo_example.so -t square --args '[7]'
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../plugin-api-c/include
#include "billiard_plugin.h"

// Go cannot call a C function pointer: these small helpers do.
static inline int32_t go_write(billiard_write_fn write, void *out, const void *data, size_t len) {
	return write(out, data, len);
}
static inline int32_t go_emit(const billiard_ctx *ctx, const void *item, size_t len) {
	return billiard_emit(ctx, item, len);
}
static inline uint32_t go_stop(const billiard_ctx *ctx) {
	return billiard_stop_requested(ctx);
}
static inline int32_t go_stop_status(const billiard_ctx *ctx) {
	return billiard_stop_status(ctx);
}
*/
import "C"

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// The task indexes, in desc.c's order.
const (
	taskSquare = iota
	taskAdd
	taskDivide
	taskCount
	taskSumSquares
	taskWaitForStop
	taskHang
	taskCrash
	taskPanic
	taskLeak
	taskNap
)

// What `leak` keeps: memory the worker never gets back.
var leaked [][]byte

// A call's writer: the host's callback and its token.
type writer struct {
	write C.billiard_write_fn
	out   unsafe.Pointer
}

func (w writer) text(s string) {
	if len(s) == 0 {
		return
	}
	b := []byte(s)
	C.go_write(w.write, w.out, unsafe.Pointer(&b[0]), C.size_t(len(b)))
}

// ints parses the arguments as exactly n integers.
func ints(args []byte, n int) ([]int64, bool) {
	var raw []json.Number
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil || len(raw) != n {
		return nil, false
	}
	out := make([]int64, n)
	for i, r := range raw {
		v, err := strconv.ParseInt(r.String(), 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

//export billiard_go_call
func billiard_go_call(task C.uint32_t, args *C.uint8_t, argsLen C.size_t, ctx *C.billiard_ctx, write C.billiard_write_fn, out unsafe.Pointer) C.int32_t {
	w := writer{write, out}
	// A copy: the host's bytes are only lent for the call.
	in := C.GoBytes(unsafe.Pointer(args), C.int(argsLen))
	switch task {
	case taskSquare:
		v, ok := ints(in, 1)
		if !ok {
			w.text("square takes one integer, as [x]")
			return C.BILLIARD_BAD_ARGS
		}
		w.text(strconv.FormatInt(v[0]*v[0], 10))
	case taskAdd:
		v, ok := ints(in, 2)
		if !ok {
			w.text("add takes two integers, as [a, b]")
			return C.BILLIARD_BAD_ARGS
		}
		w.text(strconv.FormatInt(v[0]+v[1], 10))
	case taskDivide:
		v, ok := ints(in, 2)
		if !ok {
			w.text("divide takes two integers, as [a, b]")
			return C.BILLIARD_BAD_ARGS
		}
		if v[1] == 0 {
			w.text("division by zero")
			return C.BILLIARD_TASK_ERROR
		}
		w.text(strconv.FormatInt(v[0]/v[1], 10))
	case taskCount:
		v, ok := ints(in, 1)
		if !ok || v[0] < 0 {
			w.text("count takes one integer n >= 0, as [n]")
			return C.BILLIARD_BAD_ARGS
		}
		for i := int64(0); i < v[0]; i++ {
			item := []byte(strconv.FormatInt(i, 10))
			st := C.go_emit(ctx, unsafe.Pointer(&item[0]), C.size_t(len(item)))
			switch st {
			case C.BILLIARD_OK:
			case C.BILLIARD_SOFT_TIME_LIMIT, C.BILLIARD_TERMINATED:
				w.text("stopped as asked")
				return st
			default:
				w.text("the host refused an item")
				return C.BILLIARD_TASK_ERROR
			}
		}
		w.text(strconv.FormatInt(v[0], 10))
	case taskSumSquares:
		v, ok := ints(in, 1)
		if !ok || v[0] < 0 {
			w.text("sum_squares takes one integer n >= 0, as [n]")
			return C.BILLIARD_BAD_ARGS
		}
		w.text(strconv.FormatInt(sumSquares(v[0]), 10))
	case taskWaitForStop:
		for C.go_stop(ctx) == C.BILLIARD_STOP_NONE {
			time.Sleep(time.Millisecond)
		}
		w.text("stopped as asked")
		return C.go_stop_status(ctx)
	case taskHang:
		for {
			time.Sleep(10 * time.Millisecond)
		}
	case taskCrash:
		var nowhere *int
		*nowhere = 1
	case taskPanic:
		panic(fmt.Sprintf("go_panic was called with %d bytes of arguments", len(in)))
	case taskLeak:
		v, ok := ints(in, 1)
		if !ok || v[0] < 0 || v[0] > 4096 {
			w.text("leak takes one integer 0 <= n <= 4096 (MiB), as [n]")
			return C.BILLIARD_BAD_ARGS
		}
		b := make([]byte, v[0]<<20)
		for i := range b {
			b[i] = 1
		}
		leaked = append(leaked, b)
		w.text(strconv.FormatInt(v[0], 10))
	case taskNap:
		v, ok := ints(in, 1)
		if !ok || v[0] < 0 || v[0] > 3600000 {
			w.text("nap takes one integer 0 <= ms <= 3600000, as [ms]")
			return C.BILLIARD_BAD_ARGS
		}
		<-time.After(time.Duration(v[0]) * time.Millisecond)
		w.text(strconv.FormatInt(v[0], 10))
	default:
		w.text("no such task")
		return C.BILLIARD_UNKNOWN_TASK
	}
	return C.BILLIARD_OK
}

// sumSquares sums i*i for i < n on four goroutines (the Go runtime's
// threads do the work; the call returns when they are done).
func sumSquares(n int64) int64 {
	const parts = 4
	var wg sync.WaitGroup
	sums := make([]int64, parts)
	for p := 0; p < parts; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := int64(p); i < n; i += parts {
				sums[p] += i * i
			}
		}(p)
	}
	wg.Wait()
	var total int64
	for _, s := range sums {
		total += s
	}
	return total
}

// A c-shared library needs a main package with a main function; it never runs.
func main() {}
