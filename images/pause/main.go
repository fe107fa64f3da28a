// Command pause is the sandbox ("pause") container of the local node's pods: it holds the pod's
// namespaces, reaps orphaned children (it is PID 1 when the pod shares its process namespace) and exits
// on SIGINT or SIGTERM. It plays the part of registry.k8s.io/pause, which the node cannot pull (no
// registry); `make images` builds it statically and packs it like the other images.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
