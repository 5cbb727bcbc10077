package testhost

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A frozen server is a dead host as its peers see it: every process of it stops at once
// (dockerd, containerd, shims, its containers, sshd), its connections stay open and
// nothing answers on them, no FIN and no reset, as when a machine hangs or loses power
// behind a switch. Killing the engine instead would not do: its sockets would be closed
// and the peers told at once. The cgroup v1 freezer does it: the processes in the
// server's namespace are moved into its cgroup (its engine's cgroup parent, whose children
// are its containers) and the cgroup is frozen.

const freezerRoot = "/sys/fs/cgroup/freezer"

// Freeze stops every process of the server until Thaw. A server still frozen when t ends
// is thawed first, so its cleanup can stop it.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	// Not MkdirAll alone: under cgroup v2 it would make a cgroup "freezer".
	if _, err := os.Stat(filepath.Join(freezerRoot, "cgroup.procs")); err != nil {
		t.Fatalf("server %d: freeze: no cgroup v1 freezer hierarchy at %s (cgroup v2 only is not supported yet)", s.Index, freezerRoot)
	}
	dir := filepath.Join(freezerRoot, s.cgroup)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("server %d: freeze: %v", s.Index, err)
	}
	once := new(sync.Once)
	t.Cleanup(func() { once.Do(func() { setFreezer(dir, "THAWED") }) })
	pids, err := exec.Command("ip", "netns", "pids", s.NS).Output()
	if err != nil {
		t.Fatalf("server %d: freeze: ip netns pids %s: %v", s.Index, s.NS, err)
	}
	for _, pid := range strings.Fields(string(pids)) {
		// One that exited meanwhile is fine (ESRCH).
		os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0o644)
	}
	if err := setFreezer(dir, "FROZEN"); err != nil {
		t.Fatalf("server %d: freeze: %v", s.Index, err)
	}
	s.frozen.Store(true)
}

// Thaw lets a frozen server run again, where it stopped.
func (s *Server) Thaw(t testing.TB) {
	t.Helper()
	if err := setFreezer(filepath.Join(freezerRoot, s.cgroup), "THAWED"); err != nil {
		t.Fatalf("server %d: thaw: %v", s.Index, err)
	}
	s.frozen.Store(false)
}

// Frozen says whether the server is frozen (Freeze, not yet Thaw).
func (s *Server) Frozen() bool { return s.frozen.Load() }

// IsCut says whether the server is unplugged from the switch (Cut, not yet Restore).
func (s *Server) IsCut() bool { return s.cut.Load() }

// setFreezer writes state to cgroup dir's freezer.state and waits until it reads so
// (FREEZING lasts while some task has not stopped yet).
func setFreezer(dir, state string) error {
	file := filepath.Join(dir, "freezer.state")
	if err := os.WriteFile(file, []byte(state), 0o644); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == state {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still %s after 10s, not %s", file, strings.TrimSpace(string(b)), state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pidsIn lists the processes in cgroup dir itself (not its children).
func pidsIn(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
