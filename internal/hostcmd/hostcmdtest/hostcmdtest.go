// Package hostcmdtest helps tests of commands run on the host: whether the
// processes a command started are gone.
package hostcmdtest

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Ended says whether process pid has ended: it is gone, or a zombie that
// only its new parent (init) has not reaped yet.
func Ended(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(after, "Z")
}
