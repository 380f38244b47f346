package controller

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// tokenMember is a real mutual-TLS server (the cluster's server identity)
// answering GET /v1/cluster/tokens with whatever body the test sets, as a
// broken or hostile member could.
type tokenMember struct {
	mu   sync.Mutex
	body string
}

func (m *tokenMember) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(m.body))
}

func (m *tokenMember) set(body string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.body = body
}

// A joining server checks the fetched token list before it writes
// anything: a bad list is refused with what is wrong and leaves no file
// (nor a temporary one), so the next start fetches again; a good list is
// then written whole, mode 0600, and loads.
func TestJoinTokenFetchChecksTheListBeforeWriting(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	issue(t, dir, "server", pki.RoleServer)
	id, err := pki.Load(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", id.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	m := &tokenMember{}
	hs := &http.Server{Handler: m}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close() })

	good := []Token{{Name: "admin", Role: RoleAdmin, SHA256: HashToken("a")}, {Name: "ci", Role: RoleSubmit, SHA256: HashToken("b")}}
	goodBody, _ := json.Marshal(good)
	data := t.TempDir()
	path := filepath.Join(data, "tokens.json")
	for _, tc := range []struct{ name, body, want string }{
		{"not JSON", "<html>oops</html>", "token list"},
		{"null", "null", "want a JSON array"},
		{"empty", "[]", "no token"},
		{"unknown role", `[{"name":"x","role":"root","sha256":"` + HashToken("x") + `"}]`, `role "root"`},
		{"short hash", `[{"name":"x","role":"admin","sha256":"abc"}]`, "not 64 lower-case hex"},
		{"no name", `[{"role":"admin","sha256":"` + HashToken("x") + `"}]`, "token 0: no name"},
		{"unknown field", `[{"name":"x","role":"admin","sha256":"` + HashToken("x") + `","secret":"s"}]`, "unknown field"},
		{"trailing data", string(goodBody) + "[]", "data after the value"},
		{"same name twice", `[{"name":"x","role":"admin","sha256":"` + HashToken("x") + `"},{"name":"x","role":"admin","sha256":"` + HashToken("y") + `"}]`, "used twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.set(tc.body)
			err := fetchTokens(ctx(t), ln.Addr().String(), id.ClientConfig(), path)
			if err == nil || !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing written") {
				t.Fatalf("fetch of %q: %v, want an invalid-list error saying %q and nothing written", tc.body, err, tc.want)
			}
			if ents, _ := os.ReadDir(data); len(ents) != 0 {
				t.Fatalf("a refused list left %v in the data dir", ents)
			}
		})
	}
	m.set(string(goodBody))
	if err := fetchTokens(ctx(t), ln.Addr().String(), id.ClientConfig(), path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("tokens.json after a good fetch: %v %v", fi, err)
	}
	toks, err := LoadTokens(path)
	if err != nil || !reflect.DeepEqual(toks.list, good) {
		t.Fatalf("loaded %+v, %v; want %+v", toks, err, good)
	}
	if ents, _ := os.ReadDir(data); len(ents) != 1 {
		t.Fatalf("data dir holds %v, want tokens.json alone", ents)
	}
}

// FuzzParseTokens: the token-list parser never panics; what it accepts is
// a list of valid tokens that survives writing and reading back unchanged.
func FuzzParseTokens(f *testing.F) {
	good, _ := json.Marshal([]Token{{Name: "admin", Role: RoleAdmin, SHA256: HashToken("a")}})
	for _, s := range []string{string(good), "[]", "null", "", `[{"name":"x","role":"root","sha256":"00"}]`, string(good) + " x", `[{"name":"x"}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := ParseTokens(b)
		if err != nil {
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("error without its kind: %v", err)
			}
			return
		}
		for _, tk := range list {
			if tk.Name == "" || !tk.Role.allows(RoleReadOnly) || !isSHA256Hex(tk.SHA256) {
				t.Fatalf("accepted an invalid token %+v", tk)
			}
		}
		again, _ := json.MarshalIndent(list, "", "  ")
		back, err := ParseTokens(again)
		if err != nil || !reflect.DeepEqual(back, list) {
			t.Fatalf("accepted %q, but its re-encoding reads back as %+v, %v", b, back, err)
		}
	})
}
