// render: what `helm template` prints for this chart, without Helm (which these machines cannot
// install): Go's text/template with sprig and Helm's own functions (include, required, toYaml,
// tpl), values merged from values.yaml and an override file and checked against
// values.schema.json as Helm checks them, and the chart's crds/ first.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run render.go CHART NAMESPACE RELEASE [VALUES.yaml]
//
// Needs Debian's golang-go, golang-github-masterminds-sprig-dev,
// golang-github-xeipuuv-gojsonschema-dev and golang-gopkg-yaml.v3-dev.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v3"
)

func main() {
	if len(os.Args) < 4 {
		fail("usage: render CHART NAMESPACE RELEASE [VALUES.yaml]")
	}
	chart, namespace, release := os.Args[1], os.Args[2], os.Args[3]
	values := readYAML(filepath.Join(chart, "values.yaml"))
	if len(os.Args) > 4 {
		values = merge(values, readYAML(os.Args[4]))
	}
	checkSchema(filepath.Join(chart, "values.schema.json"), values)
	meta := readYAML(filepath.Join(chart, "Chart.yaml"))
	context := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true},
		"Chart":   map[string]interface{}{"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
	}

	var out bytes.Buffer
	crds, _ := filepath.Glob(filepath.Join(chart, "crds", "*.yaml"))
	for _, file := range crds {
		body, err := os.ReadFile(file)
		check(err)
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", file, body)
	}

	root := template.New("chart").Option("missingkey=zero")
	functions := sprig.TxtFuncMap()
	functions["toYaml"] = toYAML
	functions["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil || value == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return value, nil
	}
	functions["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	functions["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(functions)
	files, _ := filepath.Glob(filepath.Join(chart, "templates", "*"))
	sort.Strings(files)
	for _, file := range files {
		body, err := os.ReadFile(file)
		check(err)
		_, err = root.New(filepath.Base(file)).Parse(string(body))
		check(err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		if strings.HasPrefix(name, "_") || strings.HasSuffix(name, ".txt") {
			continue
		}
		var buf bytes.Buffer
		check(root.ExecuteTemplate(&buf, name, context))
		if strings.TrimSpace(buf.String()) != "" {
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", file, buf.String())
		}
	}
	// Every document must be YAML a Kubernetes client can read.
	decoder := yaml.NewDecoder(bytes.NewReader(out.Bytes()))
	for {
		var document interface{}
		if err := decoder.Decode(&document); err != nil {
			if err.Error() == "EOF" {
				break
			}
			fail("the rendered chart is not valid YAML: " + err.Error() + "\n" + out.String())
		}
	}
	os.Stdout.Write(out.Bytes())
}

func readYAML(path string) map[string]interface{} {
	body, err := os.ReadFile(path)
	check(err)
	values := map[string]interface{}{}
	check(yaml.Unmarshal(body, &values))
	return values
}

// merge overlays override onto base, maps key by key, as Helm merges -f files.
func merge(base, override map[string]interface{}) map[string]interface{} {
	for key, value := range override {
		nested, isMap := value.(map[string]interface{})
		existing, wasMap := base[key].(map[string]interface{})
		if isMap && wasMap {
			base[key] = merge(existing, nested)
		} else {
			base[key] = value
		}
	}
	return base
}

func checkSchema(path string, values map[string]interface{}) {
	schema, err := os.ReadFile(path)
	check(err)
	document, err := json.Marshal(values)
	check(err)
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(document))
	check(err)
	if !result.Valid() {
		var problems []string
		for _, problem := range result.Errors() {
			problems = append(problems, "- "+problem.String())
		}
		fail("values don't meet the specifications of the schema(s):\n" + strings.Join(problems, "\n"))
	}
}

// toYAML indents by two spaces, as Helm's toYaml does.
func toYAML(value interface{}) string {
	var buf bytes.Buffer
	encoder := yaml.NewEncoder(&buf)
	encoder.SetIndent(2)
	if err := encoder.Encode(value); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func check(err error) {
	if err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "render: "+message)
	os.Exit(1)
}
