// Package archtest holds repository-wide tests of the code's shape: every
// package documents itself, and the pure core (cluster, plan, policy) does no
// I/O, so the controller, the CLI and the simulator can share it.
package archtest

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root not found: %v", err)
	}
	return root
}

// packages maps each directory with non-test Go files to those files.
func packages(t *testing.T, root string) map[string][]string {
	t.Helper()
	pkgs := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "build" || name == "bin" || name == "examples") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	root := repoRoot(t)
	for dir, files := range packages(t, root) {
		documented := false
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc != nil && strings.TrimSpace(af.Doc.Text()) != "" {
				documented = true
				break
			}
		}
		if !documented {
			rel, _ := filepath.Rel(root, dir)
			t.Errorf("package %s has no package doc comment", rel)
		}
	}
}

// The pure core may not import packages that reach the outside world.
var forbiddenInCore = []string{"net", "net/http", "os", "os/exec", "io/ioutil", "syscall", "log"}

func TestPureCoreDoesNoIO(t *testing.T) {
	root := repoRoot(t)
	core := []string{"cluster", "plan", "policy"}
	for dir, files := range packages(t, root) {
		rel, _ := filepath.Rel(root, dir)
		inCore := false
		for _, c := range core {
			if rel == c || strings.HasPrefix(rel, c+string(filepath.Separator)) {
				inCore = true
			}
		}
		// plan/btrplace is the JSON adapter at the edge: it reads files.
		if !inCore || strings.HasPrefix(rel, filepath.Join("plan", "btrplace")) {
			continue
		}
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				p := strings.Trim(imp.Path.Value, `"`)
				for _, bad := range forbiddenInCore {
					if p == bad {
						t.Errorf("%s imports %s: the planner/policy core must stay pure", f[len(root)+1:], p)
					}
				}
			}
		}
	}
}
