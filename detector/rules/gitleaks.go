// Package rules loads the detection rules: gitleaks' default rule set (through its Go
// library, github.com/zricethezav/gitleaks/v8 v8.30.x), optional user rules in gitleaks'
// TOML format, and sidekey's own credential-file rules (see credfile.go).
//
// The gitleaks TOML is decoded with go-toml and mapstructure into gitleaks'
// config.ViperConfig, never through viper: gitleaks' own loaders write to the global viper,
// which would leak into the binary's configuration.
package rules

import (
	"errors"
	"fmt"
	"os"

	"github.com/go-viper/mapstructure/v2"
	"github.com/pelletier/go-toml/v2"
	"github.com/zricethezav/gitleaks/v8/config"
)

// ErrRuleFile wraps every problem with a user rule file.
var ErrRuleFile = errors.New("rule file")

// Default returns gitleaks' default configuration (its embedded gitleaks.toml).
func Default() (config.Config, error) {
	cfg, err := parse([]byte(config.DefaultConfig))
	if err != nil {
		return config.Config{}, fmt.Errorf("gitleaks default rules: %w", err)
	}
	return cfg, nil
}

// Load returns the rule set to scan with. With path empty it is gitleaks' default set.
// Otherwise path names a gitleaks-format TOML file: with `[extend] useDefault = true` its
// rules extend the defaults (a rule with a default rule's id replaces the fields it sets,
// `disabledRules` drops defaults); without it, the file's rules replace the defaults.
func Load(path string) (config.Config, error) {
	def, err := Default()
	if err != nil {
		return config.Config{}, err
	}
	if path == "" {
		return def, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return config.Config{}, fmt.Errorf("%w %s: %w", ErrRuleFile, path, err)
	}
	user, err := parse(data)
	if err != nil {
		return config.Config{}, fmt.Errorf("%w %s: %w", ErrRuleFile, path, err)
	}
	if user.Extend.Path != "" || user.Extend.URL != "" {
		return config.Config{}, fmt.Errorf("%w %s: [extend] path and url are not supported; use useDefault = true", ErrRuleFile, path)
	}
	if !user.Extend.UseDefault {
		return user, nil
	}
	return extend(user, def), nil
}

// parse decodes gitleaks TOML into a validated config.Config. [extend] is recorded but not
// followed (gitleaks would follow it through the global viper).
func parse(data []byte) (config.Config, error) {
	var raw map[string]any
	if err := toml.Unmarshal(data, &raw); err != nil {
		return config.Config{}, fmt.Errorf("decode toml: %w", err)
	}
	var vc config.ViperConfig
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{Result: &vc, WeaklyTypedInput: true})
	if err != nil {
		return config.Config{}, err
	}
	if err := dec.Decode(raw); err != nil {
		return config.Config{}, fmt.Errorf("decode rules: %w", err)
	}
	ext := vc.Extend
	vc.Extend = config.Extend{}
	cfg, err := translate(&vc)
	if err != nil {
		return config.Config{}, err
	}
	cfg.Extend = ext
	return cfg, nil
}

// translate runs gitleaks' own translation (regex compilation, validation), turning its
// panics on a bad regular expression into an error.
func translate(vc *config.ViperConfig) (cfg config.Config, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("compile rules: %v", r)
		}
	}()
	return vc.Translate()
}

// extend merges user over base the way gitleaks' [extend] useDefault does.
func extend(user, base config.Config) config.Config {
	disabled := map[string]bool{}
	for _, id := range user.Extend.DisabledRules {
		disabled[id] = true
	}
	out := config.Config{
		Title:       user.Title,
		Description: user.Description,
		Extend:      user.Extend,
		Rules:       map[string]config.Rule{},
		Keywords:    map[string]struct{}{},
		Allowlists:  append(append([]*config.Allowlist{}, base.Allowlists...), user.Allowlists...),
	}
	add := func(r config.Rule) {
		if _, seen := out.Rules[r.RuleID]; !seen {
			out.OrderedRules = append(out.OrderedRules, r.RuleID)
		}
		out.Rules[r.RuleID] = r
		for _, k := range r.Keywords {
			out.Keywords[k] = struct{}{}
		}
	}
	for _, id := range base.OrderedRules {
		if disabled[id] {
			continue
		}
		r := base.Rules[id]
		if u, ok := user.Rules[id]; ok {
			if u.Description != "" {
				r.Description = u.Description
			}
			if u.Entropy != 0 {
				r.Entropy = u.Entropy
			}
			if u.SecretGroup != 0 {
				r.SecretGroup = u.SecretGroup
			}
			if u.Regex != nil {
				r.Regex = u.Regex
			}
			if u.Path != nil {
				r.Path = u.Path
			}
			r.Tags = append(append([]string{}, r.Tags...), u.Tags...)
			r.Keywords = append(append([]string{}, r.Keywords...), u.Keywords...)
			r.Allowlists = append(append([]*config.Allowlist{}, r.Allowlists...), u.Allowlists...)
		}
		add(r)
	}
	for _, id := range user.OrderedRules {
		if _, ok := base.Rules[id]; !ok {
			add(user.Rules[id])
		}
	}
	return out
}
