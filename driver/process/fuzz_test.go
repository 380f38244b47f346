package process

import (
	"bytes"
	"testing"
)

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"format":"ferry-checkpoint/1","task_id":"a","epoch":1,"mode":"stop","created_at":"2026-01-01T00:00:00Z","took":5,"bytes":3,"files":[{"path":"s","size":3}]}`))
	f.Add([]byte(`{"format":"ferry-checkpoint/1","mode":"continue","bytes":0,"files":[]}`))
	f.Add([]byte(`{"format":"ferry-checkpoint/1","mode":"stop","bytes":-1,"files":[{"path":"/etc/x","size":-1}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`nope`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		var sum int64
		for _, fl := range m.Files {
			if checkRelPath(fl.Path) != nil || fl.Size < 0 {
				t.Fatalf("accepted bad file %+v", fl)
			}
			sum += fl.Size
		}
		if sum != m.Bytes {
			t.Fatalf("accepted bytes %d != %d", m.Bytes, sum)
		}
	})
}

func FuzzReadStreamHeader(f *testing.F) {
	f.Add([]byte("FERRYIMG\x00\x00\x00\x02{}"))
	f.Add([]byte("FERRYIMG\x00\x00\x00\x00"))
	f.Add([]byte(`FERRYIMG` + "\x00\x00\x00\xa0" + `{"format":"ferry-image-stream/1","manifest":{"format":"ferry-checkpoint/1","mode":"stop","bytes":1,"files":[{"path":"a","size":1}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readStreamHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		if h.Format != streamFormat {
			t.Fatalf("accepted format %q", h.Format)
		}
	})
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"", "SIGUSR2", "usr1", "12", "SIGRTMIN+2", "SIGKILL", "9", "SIGRTMIN+", "-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := ParseSignal(s)
		if err != nil {
			return
		}
		if sig == 9 || sig == 19 || sig == 18 || sig <= 0 || sig > 64 {
			t.Fatalf("ParseSignal(%q) accepted %d", s, sig)
		}
	})
}

func FuzzParseProcFiles(f *testing.F) {
	f.Add([]byte("1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5555 1000 100 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"))
	f.Add([]byte("rchar: 10\nwchar: 20\nsyscr: 1\nread_bytes: 0\nwrite_bytes: 4096\n"))
	f.Add([]byte(")"))
	f.Add([]byte("SigIgn:\t0000000000001000\nSigCgt:\t0000000000000800\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if st, err := parseProcStat(b); err == nil && st.cpu < 0 {
			t.Fatalf("negative cpu %v", st.cpu)
		}
		if io, err := parseProcIO(b); err == nil && (io.rchar < 0 || io.wchar < 0) {
			t.Fatalf("negative io %+v", io)
		}
		_, _, _ = parseSignalMasks(b, 12)
	})
}
