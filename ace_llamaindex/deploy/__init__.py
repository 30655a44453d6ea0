"""Operations on a serving collection: roll a model out (refusing a step down from the champion), roll back."""
