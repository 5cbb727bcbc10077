// Command resolve runs in a container on a test swarm's overlay: it looks NAME up through
// Swarm's DNS until it has WANT addresses (30 s at most), then GETs http://<address>:PORT/
// of each and prints one line per address, "<address> <X-Host>" (the test app's
// container hostname), or "<address> error <why>".
//
//	resolve NAME PORT WANT
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"
)

func main() {
	name, port := os.Args[1], os.Args[2]
	want, _ := strconv.Atoi(os.Args[3])
	var addrs []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if addrs, _ = net.LookupHost(name); len(addrs) >= want {
			break
		}
	}
	sort.Strings(addrs)
	c := &http.Client{Timeout: 5 * time.Second}
	for _, a := range addrs {
		res, err := c.Get("http://" + net.JoinHostPort(a, port) + "/")
		if err != nil {
			fmt.Println(a, "error", err)
			continue
		}
		res.Body.Close()
		fmt.Println(a, res.Header.Get("X-Host"))
	}
}
