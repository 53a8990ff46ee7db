package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// command is one node of warpctl's command tree: either a group of
// subcommands or a leaf with flags and a run function. It is deliberately
// small (stdlib flag underneath); every level answers --help.
type command struct {
	name  string
	args  string // synopsis after the command path, e.g. "--dir DIR [--json]"
	short string // one line, shown in the parent's list
	long  string // paragraphs shown by --help

	flags func(fs *flag.FlagSet) // defines the leaf's flags on fs
	run   func(io *cmdIO, fs *flag.FlagSet) error
	subs  []*command
}

// cmdIO is what a leaf writes to.
type cmdIO struct {
	out, err io.Writer
}

// usageError is a mistake in the command line (exit status 2); other
// errors are failures of the command itself (exit status 1).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// execute runs the command line args (without the program name) against
// root and returns the exit status: 0 success, 1 failure, 2 usage error.
func execute(root *command, args []string, stdout, stderr io.Writer) int {
	cmd, path := root, []string{root.name}
	for len(cmd.subs) > 0 {
		if len(args) == 0 {
			fmt.Fprintf(stderr, "%s: missing command\n\n", strings.Join(path, " "))
			cmd.help(stderr, path)
			return 2
		}
		if isHelp(args[0]) {
			cmd.help(stdout, path)
			return 0
		}
		i := slices.IndexFunc(cmd.subs, func(c *command) bool { return c.name == args[0] })
		if i < 0 {
			fmt.Fprintf(stderr, "%s: unknown command %q; run '%s --help' for the list\n", strings.Join(path, " "), args[0], strings.Join(path, " "))
			return 2
		}
		cmd, args = cmd.subs[i], args[1:]
		path = append(path, cmd.name)
	}

	name := strings.Join(path, " ")
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // we print errors and help ourselves
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cmd.help(stdout, path)
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\nrun '%s --help' for usage\n", name, err, name)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (this command takes flags only)\nrun '%s --help' for usage\n", name, fs.Arg(0), name)
		return 2
	}
	err := cmd.run(&cmdIO{out: stdout, err: stderr}, fs)
	if err == nil {
		return 0
	}
	if ue, ok := errors.AsType[usageError](err); ok {
		fmt.Fprintf(stderr, "%s: %s\nrun '%s --help' for usage\n", name, ue.msg, name)
		return 2
	}
	fmt.Fprintf(stderr, "%s: error: %v\n", name, err)
	return 1
}

// help prints the command's description, its usage, and its subcommands or
// flags.
func (c *command) help(w io.Writer, path []string) {
	name := strings.Join(path, " ")
	if len(c.subs) > 0 {
		fmt.Fprintf(w, "Usage: %s COMMAND [flags]\n\n", name)
	} else {
		fmt.Fprintf(w, "Usage: %s %s\n\n", name, c.args)
	}
	if c.long != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(c.long))
	} else if c.short != "" {
		fmt.Fprintf(w, "%s\n\n", c.short)
	}
	if len(c.subs) > 0 {
		fmt.Fprintln(w, "Commands:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, s := range c.subs {
			fmt.Fprintf(tw, "  %s\t%s\n", s.name, s.short)
		}
		tw.Flush()
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for more about a command.\n", name)
		return
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if c.flags != nil {
		c.flags(fs)
	}
	fmt.Fprintln(w, "Flags:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		arg := "--" + f.Name
		if typ != "" {
			arg += " " + typ
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(tw, "  %s\t%s%s\n", arg, usage, def)
	})
	fmt.Fprintf(tw, "  --help\tshow this help\n")
	tw.Flush()
}
