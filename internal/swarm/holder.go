package swarm

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// process is a lock holder as the kernel of its machine knows it. A flock is dropped
// by the kernel when its process dies; a lease in a label is not, so after a kill -9
// (the OOM killer, a lost SSH session) the next handoff would wait a whole lease. A
// handoff on the same machine can tell instead that the holder is gone: same boot,
// same pid namespace (a container has pids of its own), and that pid no longer runs
// the process that started at Start (a pid is used again by another process).
type process struct {
	Boot  string `json:"boot"`
	PIDNS string `json:"pidns"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // in clock ticks since boot, /proc/<pid>/stat's 22nd field
}

// procs reads processes: the kernel's /proc, or a test's.
type procs interface {
	// self is this process; ok is false where it cannot be read (not Linux).
	self() (p process, ok bool)
	// startOf is when pid started; ok is false when no process has that pid.
	startOf(pid int) (start uint64, ok bool)
}

// gone says whether holder is a process of this machine that has ended. A holder
// that does not say, or is of another machine or pid namespace, is not known gone:
// its lease is waited out.
func gone(p procs, holder *process) bool {
	if holder == nil || holder.PID <= 0 || holder.Boot == "" {
		return false
	}
	me, ok := p.self()
	if !ok || me.Boot != holder.Boot || me.PIDNS != holder.PIDNS {
		return false
	}
	start, running := p.startOf(holder.PID)
	return !running || start != holder.Start
}

// kernel is procs read from /proc.
type kernel struct{}

func (kernel) self() (process, bool) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return process{}, false
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return process{}, false
	}
	pid := os.Getpid()
	start, ok := kernel{}.startOf(pid)
	if !ok {
		return process{}, false
	}
	return process{Boot: string(bytes.TrimSpace(boot)), PIDNS: ns, PID: pid, Start: start}, true
}

func (kernel) startOf(pid int) (uint64, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	return statStart(string(stat))
}

// statStart is the start time in a /proc/<pid>/stat line. The command name, in
// parentheses, may hold spaces and parentheses itself: the fields are counted from
// the last ')'. A zombie (state Z) has ended.
func statStart(stat string) (uint64, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:]) // from field 3, the state
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	return start, err == nil
}
