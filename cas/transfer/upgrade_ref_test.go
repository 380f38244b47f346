package transfer

import (
	"strings"
	"testing"
)

func TestGuestImageRefs(t *testing.T) {
	id := strings.Repeat("ab", 32)
	addr, got, ok, err := ParseGuestImageRef(GuestImageRef("10.0.0.1:7000", id))
	if !ok || err != nil || addr != "10.0.0.1:7000" || got != id {
		t.Fatalf("round trip: %q %q %v %v", addr, got, ok, err)
	}
	if _, _, ok, err := ParseGuestImageRef("/var/lib/ferry/vmlinuz"); ok || err != nil {
		t.Fatalf("a path is not a reference: %v %v", ok, err)
	}
	for _, bad := range []string{
		"ferry-image://",
		"ferry-image://host/" + id,                    // no port
		"ferry-image://host:1/" + strings.ToUpper(id), // not lower case
		"ferry-image://host:1/" + id[:63],
		"ferry-image://host:1/../../etc/passwd",
		"ferry-image://host:1/" + id + "/x",
	} {
		if _, _, ok, err := ParseGuestImageRef(bad); !ok || err == nil {
			t.Errorf("%q: ok %v, err %v; want a clear error", bad, ok, err)
		}
	}
}

func FuzzParseGuestImageRef(f *testing.F) {
	f.Add(GuestImageRef("127.0.0.1:7000", strings.Repeat("0", 64)))
	f.Add("ferry-image://[::1]:1/x")
	f.Add("/boot/vmlinuz")
	f.Fuzz(func(t *testing.T, s string) {
		addr, id, ok, err := ParseGuestImageRef(s)
		if !ok && err != nil {
			t.Fatal("error for a non-reference")
		}
		if ok && err == nil && (!IsImageID(id) || GuestImageRef(addr, id) != s) {
			t.Fatalf("%q parsed to %q %q", s, addr, id)
		}
	})
}
