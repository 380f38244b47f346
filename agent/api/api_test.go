package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/ferrycluster/ferry/driver"
)

// Every error kind survives the trip to the wire and back: the client's
// error errors.Is the agent's sentinel, however deeply it was wrapped.
func TestErrorKindsRoundTrip(t *testing.T) {
	for _, k := range kinds {
		wrapped := fmt.Errorf("task %q on node n: %w", "t1", fmt.Errorf("inner: %w", k.err))
		e, status := ErrorFor(wrapped)
		if e.Kind != k.kind || status != k.status || e.Message != wrapped.Error() {
			t.Fatalf("ErrorFor(%v) = %+v %d, want kind %q status %d", wrapped, e, status, k.kind, k.status)
		}
		back := e.Err()
		if !errors.Is(back, k.err) || back.Error() != wrapped.Error() {
			t.Fatalf("kind %q came back as %v", k.kind, back)
		}
	}
	e, status := ErrorFor(errors.New("disk on fire"))
	if e.Kind != "internal" || status != http.StatusInternalServerError {
		t.Fatalf("unknown error mapped to %+v %d", e, status)
	}
	if errors.Is(e.Err(), driver.ErrNotFound) {
		t.Fatal("internal error matches a sentinel")
	}
}

func TestValidID(t *testing.T) {
	for _, ok := range []string{"a", "vm-1", "job_2.part", "A9"} {
		if err := ValidID(ok); err != nil {
			t.Errorf("ValidID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".hidden", "../x", "a/b", "a b", string(make([]byte, 129))} {
		if err := ValidID(bad); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("ValidID(%q) = %v, want ErrInvalidSpec", bad, err)
		}
	}
}

func FuzzValidID(f *testing.F) {
	f.Add("vm-1")
	f.Add("../etc/passwd")
	f.Fuzz(func(t *testing.T, id string) {
		if ValidID(id) != nil {
			return
		}
		for _, c := range id {
			if c == '/' || c == 0 || c == ' ' {
				t.Fatalf("ValidID accepted %q", id)
			}
		}
		if id[0] == '.' {
			t.Fatalf("ValidID accepted %q", id)
		}
	})
}
