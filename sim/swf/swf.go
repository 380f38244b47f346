// Package swf reads the Standard Workload Format of the Parallel Workloads
// Archive: one job per line, 18 whitespace-separated numeric fields, header
// and comment lines starting with ';', -1 for an unknown value. Gzipped
// input is detected by its magic bytes.
//
// A malformed line is reported as a *LineError naming the line number and
// the field; the caller chooses to skip such lines (Options.Skip) or to stop
// at the first one. Nothing in this package panics on any input.
package swf

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrMalformed marks a line that is not a valid SWF record.
var ErrMalformed = errors.New("malformed SWF line")

// FieldNames are the 18 SWF fields, in order (1-based in the standard).
var FieldNames = [18]string{
	"job number", "submit time", "wait time", "run time", "allocated processors",
	"average cpu time", "used memory", "requested processors", "requested time",
	"requested memory", "status", "user id", "group id", "executable number",
	"queue number", "partition number", "preceding job", "think time",
}

// Job is one SWF record. Times are seconds; memory is KB per processor, as
// in the standard. Unknown values are -1.
type Job struct {
	ID                  int64
	Submit, Wait, Run   int64
	Procs               int64 // allocated processors
	AvgCPU              float64
	UsedMemKB           int64
	ReqProcs, ReqTime   int64
	ReqMemKB            int64
	Status              int64
	User, Group, Exe    int64
	Queue, Partition    int64
	PrecedingJob, Think int64
}

// LineError says which line and field of the input are wrong.
type LineError struct {
	Line  int
	Field int // 1-based SWF field number, 0 when the line as a whole is wrong
	Msg   string
}

func (e *LineError) Error() string {
	if e.Field == 0 {
		return fmt.Sprintf("swf line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("swf line %d, field %d (%s): %s", e.Line, e.Field, FieldNames[e.Field-1], e.Msg)
}

// Unwrap makes errors.Is(err, ErrMalformed) true.
func (e *LineError) Unwrap() error { return ErrMalformed }

// Options control reading.
type Options struct {
	// Skip malformed lines (each is passed to OnSkip) instead of stopping
	// at the first one.
	Skip bool
	// OnSkip, if set, receives every skipped line's error.
	OnSkip func(*LineError)
	// MaxJobs stops after that many jobs (0: all).
	MaxJobs int
}

// Trace is a parsed SWF file: its header comments and its jobs.
type Trace struct {
	Header []string
	Jobs   []Job
	// Skipped counts malformed lines skipped.
	Skipped int
}

// HeaderValue returns the value of a "; Key: value" header line, or "".
func (t *Trace) HeaderValue(key string) string {
	for _, h := range t.Header {
		h = strings.TrimSpace(strings.TrimPrefix(h, ";"))
		k, v, ok := strings.Cut(h, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// MaxProcs is the header's MaxProcs (or MaxNodes), or 0 when absent.
func (t *Trace) MaxProcs() int64 {
	for _, k := range []string{"MaxProcs", "MaxNodes"} {
		f := strings.Fields(t.HeaderValue(k))
		if len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// Read parses an SWF stream, gzipped or not.
func Read(r io.Reader, opt Options) (*Trace, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("swf: gzip: %w", err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 1<<16)
	}
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	tr := &Trace{}
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if b[0] == ';' {
			tr.Header = append(tr.Header, string(b))
			continue
		}
		j, lerr := parseLine(b, line)
		if lerr != nil {
			if !opt.Skip {
				return tr, lerr
			}
			tr.Skipped++
			if opt.OnSkip != nil {
				opt.OnSkip(lerr)
			}
			continue
		}
		tr.Jobs = append(tr.Jobs, j)
		if opt.MaxJobs > 0 && len(tr.Jobs) >= opt.MaxJobs {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return tr, fmt.Errorf("swf: after line %d: %w", line, err)
	}
	return tr, nil
}

func parseLine(b []byte, line int) (Job, *LineError) {
	var f [18]string
	n := 0
	for _, w := range strings.Fields(string(b)) {
		if n == 18 {
			return Job{}, &LineError{Line: line, Msg: "more than 18 fields"}
		}
		f[n] = w
		n++
	}
	if n < 18 {
		return Job{}, &LineError{Line: line, Field: n + 1, Msg: fmt.Sprintf("missing: only %d of 18 fields", n)}
	}
	var iv [18]int64
	var avg float64
	for i, s := range f {
		if i == 5 { // average cpu time may be fractional
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || v != v {
				return Job{}, &LineError{Line: line, Field: i + 1, Msg: fmt.Sprintf("not a number: %q", s)}
			}
			avg = v
			continue
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			// Some archives write integral fields as "3.00".
			fv, ferr := strconv.ParseFloat(s, 64)
			if ferr != nil || fv != fv || fv > 1e15 || fv < -1e15 || fv != float64(int64(fv)) {
				return Job{}, &LineError{Line: line, Field: i + 1, Msg: fmt.Sprintf("not an integer: %q", s)}
			}
			v = int64(fv)
		}
		if v < -1 {
			return Job{}, &LineError{Line: line, Field: i + 1, Msg: fmt.Sprintf("negative value %d (only -1 means unknown)", v)}
		}
		iv[i] = v
	}
	j := Job{
		ID: iv[0], Submit: iv[1], Wait: iv[2], Run: iv[3], Procs: iv[4], AvgCPU: avg,
		UsedMemKB: iv[6], ReqProcs: iv[7], ReqTime: iv[8], ReqMemKB: iv[9], Status: iv[10],
		User: iv[11], Group: iv[12], Exe: iv[13], Queue: iv[14], Partition: iv[15],
		PrecedingJob: iv[16], Think: iv[17],
	}
	if j.Submit < 0 {
		return Job{}, &LineError{Line: line, Field: 2, Msg: "unknown submit time"}
	}
	return j, nil
}
