# fleet aliases for bash and zsh. Source it from ~/.bashrc or ~/.zshrc:
#   source /path/to/fleet/shell/fleet-aliases.sh
# FLEET_HOME is where tasks.py lives (default: this file's project).
if [ -n "${BASH_SOURCE:-}" ]; then
  _fleet_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
elif [ -n "${ZSH_VERSION:-}" ]; then
  _fleet_here="$(cd "$(dirname "${(%):-%x}")/.." && pwd)"
else
  _fleet_here="$PWD"
fi
export FLEET_HOME="${FLEET_HOME:-$_fleet_here}"
unset _fleet_here

fleet() { invoke --search-root "$FLEET_HOME" "$@"; }
alias fpf='fleet preflight'              # fpf --all
alias ffo='fleet fanout'                 # ffo --all "make test"
alias fdx='fleet dispatch'               # fdx --host epyc6 --repo affordabot --task "..."
alias fab='fleet abort'                  # fab --host epyc6 --session ses_...
alias fss='fleet sessions'               # fss --hosts @gpu
alias fst='fleet status'                 # fst
alias finv='fleet inventory.show'        # finv --hosts tag:gpu
alias flab='fleet lab.up'                # flab --count 5 --agents 1
