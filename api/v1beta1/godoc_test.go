package v1beta1

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryFieldHasGodoc keeps the API self-documenting: `kubectl explain` shows these
// comments, so every field of every type must say what it means.
func TestEveryFieldHasGodoc(t *testing.T) {
	files, err := filepath.Glob("*_types.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no type files found: %v", err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, file := range files {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			for _, field := range st.Fields.List {
				if len(field.Names) == 0 {
					continue // embedded TypeMeta/ObjectMeta/ListMeta and inline structs
				}
				name := field.Names[0].Name
				if name == "Items" && strings.HasSuffix(ts.Name.Name, "List") {
					continue
				}
				checked++
				doc := strings.TrimSpace(field.Doc.Text())
				if doc == "" {
					t.Errorf("%s: %s.%s has no godoc", fset.Position(field.Pos()), ts.Name.Name, name)
				}
			}
			return true
		})
	}
	if checked < 50 {
		t.Fatalf("only %d fields checked: the parser missed the API types", checked)
	}
}
