// Command flux-health reports what Flux's kustomize-controller says of each
// object read from stdin (a JSON array) when a Kustomization's
// healthCheckExprs decide its health: fluxcd/pkg/runtime's cel.NewStatusReader
// over spec.healthCheckExprs, as kustomize-controller builds it, then the
// status reader's ReadStatusForObject, the kstatus poller's own call.
//
// Usage: flux-health KUSTOMIZATION_YAML < objects.json > verdicts.json
//
// It prints one verdict per object, in order, as a JSON array of
// {"status", "message", "error"}: the kstatus status (Current, InProgress,
// Failed, Unknown) and, for Unknown, the evaluation error Flux reports.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"
)

// The part of a kustomize.toolkit.fluxcd.io/v1 Kustomization read here.
type kustomization struct {
	Spec struct {
		HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
	} `json:"spec"`
}

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flux-health:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: flux-health KUSTOMIZATION_YAML < objects.json")
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	var k kustomization
	if err := yaml.Unmarshal(raw, &k); err != nil {
		return fmt.Errorf("%s: %w", os.Args[1], err)
	}
	if len(k.Spec.HealthCheckExprs) == 0 {
		return fmt.Errorf("%s: no spec.healthCheckExprs", os.Args[1])
	}
	// kustomize-controller rejects the Kustomization (InvalidCELExpression)
	// when this fails.
	newReader, err := cel.NewStatusReader(k.Spec.HealthCheckExprs)
	if err != nil {
		return fmt.Errorf("%s: %w", os.Args[1], err)
	}
	// Neither the RESTMapper nor the ClusterReader is used for an object
	// already read: the poller has fetched it when it calls this.
	reader := newReader(nil)

	objects, err := readObjects()
	if err != nil {
		return err
	}
	ctx := context.Background()
	verdicts := make([]verdict, 0, len(objects))
	for _, obj := range objects {
		rs, err := reader.ReadStatusForObject(ctx, nil, &unstructured.Unstructured{Object: obj})
		if err != nil {
			return err
		}
		v := verdict{Status: rs.Status.String(), Message: rs.Message}
		if rs.Error != nil {
			v.Error = rs.Error.Error()
		}
		verdicts = append(verdicts, v)
	}
	return json.NewEncoder(os.Stdout).Encode(verdicts)
}

// readObjects reads stdin's JSON array as the API server's objects decode:
// integers as int64 (apimachinery's JSON), not float64, which both engines
// would read differently (Flux skips its observedGeneration check on one).
func readObjects() ([]map[string]any, error) {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return nil, err
	}
	var items []any
	if err := utiljson.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("reading a JSON array of objects from stdin: %w", err)
	}
	objects := make([]map[string]any, 0, len(items))
	for i, item := range items {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("stdin[%d] is not an object", i)
		}
		objects = append(objects, obj)
	}
	return objects, nil
}
