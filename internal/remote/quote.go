package remote

import "strings"

// Quote makes s one word for a POSIX shell (sh, bash, dash, zsh), which is what sshd runs
// a command with on a server: single quotes, with each ' written as '\”.
func Quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Command joins args into one remote command line, each quoted. The line is visible in the
// server's process list: never put a secret in it, send it on stdin.
func Command(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}
