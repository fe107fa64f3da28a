// Command coredns is CoreDNS with only the plugins the local node needs: cluster DNS for pods
// (kubernetes), with errors, health, ready, cache and forward. The node harness (e2e/harness/node.ts)
// runs it inside the node's network namespace and points the kubelet's clusterDNS at it, so names such as
// kubernetes.default.svc and chaperone-webhook.chaperone-system.svc resolve in pods as in any cluster.
// Selecting plugins here (CoreDNS's documented way of building with a chosen plugin set) keeps the
// cloud-provider plugins and their SDKs out of the build.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives in CoreDNS's own order (core/dnsserver/zdirectives.go), restricted to the plugins above.
var directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes", "forward"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
