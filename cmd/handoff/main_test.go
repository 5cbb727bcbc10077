package main

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSIGHUPEndsEveryRunButTheProxyDaemon(t *testing.T) {
	for args, hup := range map[string]bool{
		"deploy":                                 true,
		"--state-dir /tmp/s deploy --wait 5m":    true,
		"rollback":                               true,
		"proxy status":                           true,
		"proxy --socket /tmp/p.sock pause":       true,
		"proxy":                                  false,
		"proxy --socket /tmp/p.sock":             false,
		"--state-dir /tmp/s proxy --metrics :91": false,
	} {
		require.Equal(t, hup, slices.Contains(endSignals(strings.Fields(args)), os.Signal(syscall.SIGHUP)), args)
	}
}
