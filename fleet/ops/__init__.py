"""Operations: what a person asks fleet to do, one module each."""
