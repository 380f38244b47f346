package swf

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"strings"
	"testing"
)

const sample = `; Version: 2.2
; MaxNodes: 100
; MaxProcs: 100
   15   599850 192180   3477    4     -1    -1    4  53940    -1  1  12  12  -1 -1 -1 -1 -1

   16   600022  11940   2488   25  142.00    -1   25   3600    -1  1  13  13  -1 -1 -1 -1 -1
`

func TestReadParsesFieldsAndHeader(t *testing.T) {
	tr, err := Read(strings.NewReader(sample), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Jobs) != 2 || tr.MaxProcs() != 100 || len(tr.Header) != 3 {
		t.Fatalf("jobs=%d maxprocs=%d header=%d", len(tr.Jobs), tr.MaxProcs(), len(tr.Header))
	}
	j := tr.Jobs[1]
	if j.ID != 16 || j.Submit != 600022 || j.Wait != 11940 || j.Run != 2488 || j.Procs != 25 ||
		j.AvgCPU != 142 || j.UsedMemKB != -1 || j.ReqTime != 3600 || j.User != 13 || j.Think != -1 {
		t.Fatalf("job = %+v", j)
	}
}

func TestReadGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(sample))
	zw.Close()
	tr, err := Read(&buf, Options{})
	if err != nil || len(tr.Jobs) != 2 {
		t.Fatalf("err=%v jobs=%d", err, len(tr.Jobs))
	}
}

func TestMalformedLineNamesLineAndField(t *testing.T) {
	cases := []struct{ line, want string }{
		{"1 0 0 10 x 0 0 0 0 0 0 0 0 0 0 0 0 0", "line 2, field 5 (allocated processors): not an integer"},
		{"1 0 0 10", "line 2, field 5 (allocated processors): missing"},
		{"1 0 0 10 1 0 0 0 0 0 0 0 0 0 0 0 0 0 7", "line 2: more than 18 fields"},
		{"1 0 -5 10 1 0 0 0 0 0 0 0 0 0 0 0 0 0", "line 2, field 3 (wait time): negative"},
		{"1 -1 0 10 1 0 0 0 0 0 0 0 0 0 0 0 0 0", "field 2 (submit time): unknown"},
		{"1 0 0 10 1 NaN 0 0 0 0 0 0 0 0 0 0 0 0", "field 6 (average cpu time)"},
	}
	for _, c := range cases {
		in := "; h\n" + c.line + "\n1 0 0 10 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
		_, err := Read(strings.NewReader(in), Options{})
		var le *LineError
		if !errors.As(err, &le) || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.line, err, c.want)
		}
		var skipped []*LineError
		tr, err := Read(strings.NewReader(in), Options{Skip: true, OnSkip: func(e *LineError) { skipped = append(skipped, e) }})
		if err != nil || len(tr.Jobs) != 1 || tr.Skipped != 1 || len(skipped) != 1 || skipped[0].Line != 2 {
			t.Errorf("%q skip: err=%v jobs=%d skipped=%d", c.line, err, len(tr.Jobs), tr.Skipped)
		}
	}
}

func TestShippedTracesParse(t *testing.T) {
	for name, want := range map[string]int{"KTH-SP2-1996-2.1-cln.swf.gz": 28476, "lublin_256.swf.gz": 10000} {
		f, err := os.Open("../../../shared/traces/" + name)
		if err != nil {
			t.Logf("trace %s not present: %v", name, err)
			continue
		}
		tr, err := Read(f, Options{})
		f.Close()
		if err != nil || len(tr.Jobs) != want {
			t.Errorf("%s: err=%v jobs=%d want %d", name, err, len(tr.Jobs), want)
		}
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("1 0 0 10 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"))
	f.Add([]byte("; MaxProcs: x\n1 2 3\n"))
	f.Add([]byte{0x1f, 0x8b, 0, 1})
	f.Add([]byte("1 0 0 1e300 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, skip := range []bool{false, true} {
			tr, err := Read(bytes.NewReader(b), Options{Skip: skip})
			if err != nil && !errors.Is(err, ErrMalformed) && tr == nil && b[0] != 0x1f {
				t.Fatalf("unexpected error kind: %v", err)
			}
			if tr != nil {
				for _, j := range tr.Jobs {
					if j.Submit < 0 || j.Procs < -1 || j.Run < -1 {
						t.Fatalf("invalid job accepted: %+v", j)
					}
				}
				_ = tr.MaxProcs()
			}
		}
	})
}
