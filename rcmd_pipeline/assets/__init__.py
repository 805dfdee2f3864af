"""Assets, one module per stage. Assets orchestrate; resources talk to the outside world."""
