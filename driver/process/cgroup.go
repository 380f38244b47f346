package process

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Capabilities says which resource limits this driver enforces on this
// machine, and why not when it does not.
type Capabilities struct {
	// Cgroup is "v2", "v1" or "" (none usable).
	Cgroup      string `json:"cgroup"`
	CPULimit    bool   `json:"cpu_limit"`
	MemoryLimit bool   `json:"memory_limit"`
	// Reason explains a missing limit.
	Reason string `json:"reason,omitempty"`
}

// cgroupSet knows where per-task cgroups go. Task cgroups are created below
// the driver's own cgroup (never above it): <own>/ferry-<hash of data dir>/<id>
// per controller hierarchy, so two driver instances in one process (two
// "nodes" in a test) do not collide and the machine's cgroup layout is left
// alone.
type cgroupSet struct {
	caps Capabilities
	// bases per controller: "cpu", "memory" (v1) or one "unified" (v2).
	cpuBase, memBase string
}

const cpuPeriodUS = 100000

func detectCgroups(dataDir string) *cgroupSet {
	sum := sha256.Sum256([]byte(dataDir))
	name := "ferry-" + hex.EncodeToString(sum[:4])
	cs := &cgroupSet{}
	mounts, err := cgroupMounts()
	if err != nil {
		cs.caps.Reason = "cannot read /proc/self/mountinfo: " + err.Error()
		return cs
	}
	own, err := ownCgroups()
	if err != nil {
		cs.caps.Reason = "cannot read /proc/self/cgroup: " + err.Error()
		return cs
	}
	var reasons []string
	// cgroup v2 first, when it has the controllers.
	if mnt, ok := mounts["unified"]; ok {
		base := filepath.Join(mnt, own["unified"], name)
		if err := probeV2(base); err == nil {
			cs.caps = Capabilities{Cgroup: "v2", CPULimit: true, MemoryLimit: true}
			cs.cpuBase, cs.memBase = base, base
			return cs
		} else {
			reasons = append(reasons, "v2: "+err.Error())
		}
	}
	for _, ctl := range []string{"cpu", "memory"} {
		mnt, ok := mounts[ctl]
		if !ok {
			reasons = append(reasons, "v1 "+ctl+": not mounted")
			continue
		}
		base := filepath.Join(mnt, own[ctl], name)
		if err := probeV1(base); err != nil {
			reasons = append(reasons, "v1 "+ctl+": "+err.Error())
			continue
		}
		cs.caps.Cgroup = "v1"
		if ctl == "cpu" {
			cs.cpuBase, cs.caps.CPULimit = base, true
		} else {
			cs.memBase, cs.caps.MemoryLimit = base, true
		}
	}
	if !cs.caps.CPULimit || !cs.caps.MemoryLimit {
		cs.caps.Reason = strings.Join(reasons, "; ")
	}
	return cs
}

// probeV2 checks that task cgroups with cpu and memory limits can be made
// below base's parent; it leaves nothing behind (base is made when a task
// needs it).
func probeV2(base string) error {
	parent := filepath.Dir(base)
	ctl, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return err
	}
	f := strings.Fields(string(ctl))
	if !contains(f, "cpu") || !contains(f, "memory") {
		return fmt.Errorf("controllers %q lack cpu or memory", strings.TrimSpace(string(ctl)))
	}
	sub, _ := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
	if s := strings.Fields(string(sub)); !contains(s, "cpu") || !contains(s, "memory") {
		if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
			return fmt.Errorf("enable cpu and memory below %s: %v", parent, err)
		}
	}
	probe := base + "-probe-" + strconv.Itoa(os.Getpid())
	if err := os.Mkdir(probe, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	defer os.Remove(probe)
	_, err = os.Stat(filepath.Join(probe, "memory.max"))
	return err
}

// probeV1 checks that a cgroup can be made below base's parent.
func probeV1(base string) error {
	probe := base + "-probe-" + strconv.Itoa(os.Getpid())
	if err := os.Mkdir(probe, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return os.Remove(probe)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// cgroupMounts maps a controller ("cpu", "memory") or "unified" to its
// mount point, from /proc/self/mountinfo.
func cgroupMounts() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup2":
			if _, ok := out["unified"]; !ok {
				out["unified"] = pf[4]
			}
		case "cgroup":
			for _, o := range strings.Split(qf[2], ",") {
				if o == "cpu" || o == "memory" {
					out[o] = pf[4]
				}
			}
		}
	}
	return out, sc.Err()
}

// ownCgroups maps a controller (or "unified") to this process's cgroup path.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out["unified"] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// create makes the task's cgroups with its limits and returns the
// directories the supervisor joins. Limits the machine cannot enforce are
// described in the returned note.
func (cs *cgroupSet) create(id string, cpus float64, mem int64) (dirs []string, note string, err error) {
	want := cpus > 0 || mem > 0
	if !want {
		return nil, "", nil
	}
	var missing []string
	if cpus > 0 && !cs.caps.CPULimit {
		missing = append(missing, "cpu")
	}
	if mem > 0 && !cs.caps.MemoryLimit {
		missing = append(missing, "memory")
	}
	if len(missing) > 0 {
		note = "limits not enforced (" + strings.Join(missing, ", ") + "): " + cs.caps.Reason
	}
	quota := int64(cpus * cpuPeriodUS)
	if cpus > 0 {
		quota = max(quota, 1000)
	}
	if cs.caps.Cgroup == "v2" {
		dir := filepath.Join(cs.cpuBase, id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, note, err
		}
		if cpus > 0 {
			if err := os.WriteFile(filepath.Join(dir, "cpu.max"), []byte(fmt.Sprintf("%d %d", quota, cpuPeriodUS)), 0); err != nil {
				return nil, note, fmt.Errorf("cpu.max: %w", err)
			}
		}
		if mem > 0 {
			if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(mem, 10)), 0); err != nil {
				return nil, note, fmt.Errorf("memory.max: %w", err)
			}
		}
		return []string{dir}, note, nil
	}
	if cpus > 0 && cs.caps.CPULimit {
		dir := filepath.Join(cs.cpuBase, id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, note, err
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cpuPeriodUS)), 0); err != nil {
			return nil, note, fmt.Errorf("cpu.cfs_period_us: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.FormatInt(quota, 10)), 0); err != nil {
			return nil, note, fmt.Errorf("cpu.cfs_quota_us: %w", err)
		}
		dirs = append(dirs, dir)
	}
	if mem > 0 && cs.caps.MemoryLimit {
		dir := filepath.Join(cs.memBase, id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, note, err
		}
		if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(mem, 10)), 0); err != nil {
			return nil, note, fmt.Errorf("memory.limit_in_bytes: %w", err)
		}
		dirs = append(dirs, dir)
	}
	return dirs, note, nil
}

// remove deletes a task's cgroups (best effort: they are empty once the
// job has ended).
func (cs *cgroupSet) remove(dirs []string) {
	for _, d := range dirs {
		_ = os.Remove(d)
		_ = os.Remove(filepath.Dir(d)) // the base, once its last task is gone
	}
}

// removeBases deletes the driver's base cgroups, with any empty task
// cgroup left in them, when the driver closes. rmdir(2) refuses a cgroup
// that still holds a process or a child, so the cgroups of jobs that
// outlive the agent stay, with their base, for the next driver over the
// same data dir.
func (cs *cgroupSet) removeBases() {
	for _, b := range []string{cs.cpuBase, cs.memBase} {
		if b == "" {
			continue
		}
		ents, _ := os.ReadDir(b)
		for _, e := range ents {
			if e.IsDir() {
				_ = os.Remove(filepath.Join(b, e.Name()))
			}
		}
		_ = os.Remove(b)
	}
}
