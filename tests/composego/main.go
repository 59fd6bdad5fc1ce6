// Command composeconfig loads a Compose file the way Docker Compose does and prints the
// resolved project as JSON: compose-go (github.com/compose-spec/compose-go), the library the
// docker compose CLI is built on, interpolates ${VAR...} from the given env file, validates the
// file against the Compose JSON schema, merges extension fields and env_file entries.
// tests/test_compose.py builds and runs it; Docker itself is not needed.
//
// Usage: composeconfig COMPOSE_FILE ENV_FILE
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: composeconfig COMPOSE_FILE ENV_FILE")
		os.Exit(2)
	}
	// Only ENV_FILE is read for variables: not this process's environment, not a stray .env.
	opts, err := cli.NewProjectOptions([]string{os.Args[1]},
		cli.WithEnvFiles(os.Args[2]), cli.WithDotEnv, cli.WithName("imageindex"))
	if err == nil {
		var out []byte
		project, loadErr := opts.LoadProject(context.Background())
		if err = loadErr; err == nil {
			if out, err = project.MarshalJSON(); err == nil {
				_, err = os.Stdout.Write(out)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
