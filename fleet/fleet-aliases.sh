# fleet aliases for bash and zsh, over the installed `fleet` command (works from any directory).
# Source it from ~/.bashrc or ~/.zshrc:
#   source /path/to/fleet/shell/fleet-aliases.sh
# Completion for the fleet command itself: eval "$(fleet --print-completion-script bash)" (or zsh).
alias fpf='fleet preflight'              # fpf --all --deep
alias ffo='fleet fanout'                 # ffo --all "make test"
alias fre='fleet retry'                  # rerun the last fanout on the hosts that failed
alias fdx='fleet dispatch'               # fdx --host epyc6 --repo affordabot --task "..."
alias fabort='fleet abort'               # fabort --host epyc6 --session ses_...
alias fss='fleet sessions'               # fss --hosts @gpu
alias fst='fleet status'                 # fst
alias finv='fleet inventory.show'        # finv --hosts tag:gpu
alias flab='fleet lab.up'                # flab --count 5 --agents 1
