package itest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// TestMain ends the suite with a check that every container, network and
// volume its tests made is gone: a test that leaves one behind fails the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left Docker objects behind: %s\n", strings.Join(left, ", "))
		code = 1
	}
	os.Exit(code)
}

// leftovers lists what this process's tests made (named with runID) and
// did not remove.
func leftovers() []string {
	api, err := client.New(client.FromEnv)
	if err != nil {
		return nil
	}
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ours := func(name string) bool { return strings.HasPrefix(strings.TrimPrefix(name, "/"), "it"+runID) }
	var left []string
	if list, err := api.ContainerList(ctx, client.ContainerListOptions{All: true}); err == nil {
		for _, c := range list.Items {
			if len(c.Names) > 0 && ours(c.Names[0]) {
				left = append(left, "container "+strings.TrimPrefix(c.Names[0], "/"))
			}
		}
	}
	if list, err := api.NetworkList(ctx, client.NetworkListOptions{}); err == nil {
		for _, n := range list.Items {
			if ours(n.Name) {
				left = append(left, "network "+n.Name)
			}
		}
	}
	if list, err := api.VolumeList(ctx, client.VolumeListOptions{}); err == nil {
		for _, v := range list.Items {
			if ours(v.Name) {
				left = append(left, "volume "+v.Name)
			}
		}
	}
	return left
}
