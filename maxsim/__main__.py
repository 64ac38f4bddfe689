from maxsim.cli import main

main()
