// Package config reads a binary's configuration once, at the edge: command-line flags,
// SIDEKEY_* environment variables and an optional config file, in that order of precedence,
// through a local viper instance (never the global one), into a typed struct.
//
// Only main packages import it; libraries take the typed structs.
package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// FileFlag is the flag that names an optional config file (YAML, JSON or TOML).
const FileFlag = "config"

// EnvPrefix prefixes every environment variable: --init-timeout is SIDEKEY_INIT_TIMEOUT.
const EnvPrefix = "SIDEKEY"

// Validator is implemented by config structs that check themselves after loading.
type Validator interface{ Validate() error }

// Load binds fs to a new viper, reads the file named by --config (or SIDEKEY_CONFIG) if any,
// and decodes into out, whose fields carry `mapstructure:"flag-name"` tags. Keys in the file
// that no flag knows are an error naming them, and so is a value of the wrong type. When out
// implements Validator its Validate runs last.
func Load(fs *pflag.FlagSet, out any) error {
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	v.AutomaticEnv()
	if err := v.BindPFlags(fs); err != nil {
		return fmt.Errorf("bind flags: %w", err)
	}
	if file := v.GetString(FileFlag); file != "" {
		v.SetConfigFile(file)
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("read config file %s: %w", file, err)
		}
		var unknown []string
		for _, k := range v.AllKeys() {
			if fs.Lookup(k) == nil && k != FileFlag {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			return fmt.Errorf("config file %s: unknown keys %s", file, strings.Join(unknown, ", "))
		}
	}
	if err := v.Unmarshal(out, func(c *mapstructure.DecoderConfig) {
		c.ErrorUnused = false
		c.WeaklyTypedInput = true
		c.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		)
	}); err != nil {
		return fmt.Errorf("config: %w", explain(err))
	}
	if val, ok := out.(Validator); ok {
		if err := val.Validate(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	return nil
}

// explain turns mapstructure's decode errors into one line per bad key.
func explain(err error) error {
	var derr *mapstructure.DecodeError
	if errors.As(err, &derr) {
		return fmt.Errorf("%s: %w", derr.Name(), derr.Unwrap())
	}
	return err
}

// Env reports, for help texts, the environment variable that sets flag name.
func Env(name string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// AddFileFlag adds --config to fs.
func AddFileFlag(fs *pflag.FlagSet) {
	fs.String(FileFlag, "", "optional config file (YAML, JSON or TOML) whose keys are flag names; env "+Env(FileFlag))
}
